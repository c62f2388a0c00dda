"""A person answers for themselves: a human identity has no owner.

An owner answers for a service account or agent. Over a human identity it only
lent powers (found by a review): a reviewer who owned a person's identity could
issue tokens for it, sign in as that person through the sidecar, and approve the
requests that opened. ``Identity.clean`` now refuses an owner on a human identity;
this clears the ones already set. Nothing else about those identities changes.
"""

from django.db import migrations


def clear_owners(apps, schema_editor):  # noqa: ANN001 - the migration API's
    Identity = apps.get_model("governance", "Identity")
    Identity.objects.filter(kind="human", owner__isnull=False).update(owner=None)


class Migration(migrations.Migration):
    dependencies = [("governance", "0009_masking_strategy_free_text")]

    operations = [migrations.RunPython(clear_owners, migrations.RunPython.noop)]
