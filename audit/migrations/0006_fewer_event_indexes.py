"""Three fewer indexes on every audit_event partition: each one cost every ingested
event a B-tree insertion. Together they were 13-18% of PostgreSQL's CPU per
ingested event (bench/README.md).

- ``(occurred_at, id)`` duplicated the primary key ``(occurred_at, environment,
  id)`` within a leaf (one environment each). The key is now ``(occurred_at, id,
  environment)``, which serves the explorer's keyset order (newest first, then
  id) as the dropped index did.
- ``(event_id)`` served no query: idempotency uses ``audit_event_key``.
- ``(type, occurred_at)`` held every statement event, the bulk of the trail, for
  which the time order itself is the better path. It now holds only the rarer
  types (sessions, sign-ins, policy changes …) that a filter on type must find
  without walking the statements.

Building the new key reads every partition once, under a lock that holds
ingestion back meanwhile: 1-4 s for 360,000-480,000 events on the 2-vCPU sandbox,
so minutes on a trail of tens of millions. Both directions were run on such
databases.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE audit_event DROP CONSTRAINT audit_event_pkey;
ALTER TABLE audit_event ADD CONSTRAINT audit_event_pkey PRIMARY KEY (occurred_at, id, environment);
DROP INDEX audit_event_occurred_idx;
DROP INDEX audit_event_event_id_idx;
DROP INDEX audit_event_type_idx;
CREATE INDEX audit_event_type_idx ON audit_event (type, occurred_at) WHERE type <> 'statement';
"""

BACKWARD = """
DROP INDEX audit_event_type_idx;
CREATE INDEX audit_event_type_idx ON audit_event (type, occurred_at);
CREATE INDEX audit_event_event_id_idx ON audit_event (event_id);
CREATE INDEX audit_event_occurred_idx ON audit_event (occurred_at, id);
ALTER TABLE audit_event DROP CONSTRAINT audit_event_pkey;
ALTER TABLE audit_event ADD CONSTRAINT audit_event_pkey PRIMARY KEY (occurred_at, environment, id);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0005_activity_daily"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
