"""Seed the built-in environments and classifications.

A fresh Warden already knows the usual kinds of sensitive data, so a security
engineer's first masking rule has something to point at. Re-running is a no-op
(update_or_create by name) and reversing removes only built-ins nobody uses.
"""

from django.db import migrations

ENVIRONMENTS = [
    ("production", 5, "Live systems and customer data."),
    ("staging", 3, "Pre-production; may hold copies of production data."),
    ("sandbox", 1, "Throw-away data for experiments."),
]

CLASSIFICATIONS = [
    ("pii.email", "confidential", "E-mail address of a person."),
    ("pii.phone", "confidential", "Telephone number of a person."),
    ("pii.name", "confidential", "A person's full, given or family name."),
    ("pii.address", "confidential", "Postal address of a person."),
    ("pii.dob", "confidential", "Date of birth."),
    ("pii.ssn", "restricted", "US Social Security number."),
    ("pii.national_id", "restricted", "National identity number (passport, NIN, BSN, ...)."),
    ("financial.card", "restricted", "Payment card number (PAN)."),
    ("financial.iban", "restricted", "International bank account number."),
    ("secret.token", "restricted", "API key, access token or session secret."),
    ("secret.password", "restricted", "Password or password hash."),
    ("network.ip", "internal", "IP address."),
    ("health.record", "restricted", "Health or medical information."),
    ("general.internal", "internal", "Internal business data, not for the public."),
    ("general.public", "public", "Data that may be published."),
]


def seed(apps, schema_editor):
    Environment = apps.get_model("governance", "Environment")
    Classification = apps.get_model("governance", "Classification")
    for name, criticality, description in ENVIRONMENTS:
        Environment.objects.update_or_create(
            name=name, defaults={"criticality": criticality, "description": description}
        )
    for name, level, description in CLASSIFICATIONS:
        Classification.objects.update_or_create(
            name=name, defaults={"level": level, "description": description, "is_builtin": True}
        )


def unseed(apps, schema_editor):
    Classification = apps.get_model("governance", "Classification")
    Classification.objects.filter(
        is_builtin=True, masking_rules__isnull=True, column_classifications__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
