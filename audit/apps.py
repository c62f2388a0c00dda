from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        from audit import signals  # noqa: F401 - connects the sign-in receivers
        from audit.governance_lookups import LOOKUPS
        from audit.sink.lookups import lookups_install

        # The sink imports no other app; what it needs of governance is plugged in here.
        lookups_install(LOOKUPS)
