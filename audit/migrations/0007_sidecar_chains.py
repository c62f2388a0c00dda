"""One chain per sidecar, anchored into its datasource's chain (docs/audit.md,
"The hash chain").

A sidecar's events now go to ``datasource:<id>/sidecar:<id>``, so sidecars of
one datasource no longer queue on one head row. Each sidecar chain's head is
written, from time to time, as a ``chain.anchored`` event into the datasource's
chain; the head row remembers the last anchored seq and when, so intake knows
when the next anchor is due.

The daily rollups gain a ``writer`` in their keys (the sidecar whose batches
counted the row, 0 for rebuilds): two sidecars' batches otherwise upsert the same
rollup rows (one per day, environment and outcome) and the second waits for the
first's commit, so their commits would queue there instead of at the head.
Readers sum over it, as they already sum over identities or days.

Existing trails are carried as they are: the events already stored stay in
their datasource's chain, whose hashes and links do not change, and verify as
before. No row of ``audit_event`` is rewritten.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE audit_chain_head
    ADD COLUMN anchored_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN anchored_at timestamptz;

ALTER TABLE audit_activity_daily ADD COLUMN writer integer NOT NULL DEFAULT 0;
ALTER TABLE audit_activity_daily DROP CONSTRAINT audit_activity_daily_pkey;
ALTER TABLE audit_activity_daily ADD PRIMARY KEY (day, environment, outcome, writer);
ALTER TABLE audit_access_daily ADD COLUMN writer integer NOT NULL DEFAULT 0;
ALTER TABLE audit_access_daily DROP CONSTRAINT audit_access_daily_pkey;
ALTER TABLE audit_access_daily
    ADD PRIMARY KEY (day, identity_name, datasource_id, classification, writer);
"""

# Back to one row per key: the writers' rows summed.
BACKWARD = """
LOCK TABLE audit_activity_daily, audit_access_daily IN EXCLUSIVE MODE;
CREATE TEMPORARY TABLE activity_sum ON COMMIT DROP AS
    SELECT day, environment, outcome, sum(events)::bigint AS events
    FROM audit_activity_daily GROUP BY 1, 2, 3;
DELETE FROM audit_activity_daily;
ALTER TABLE audit_activity_daily DROP CONSTRAINT audit_activity_daily_pkey;
ALTER TABLE audit_activity_daily DROP COLUMN writer;
INSERT INTO audit_activity_daily SELECT * FROM activity_sum;
ALTER TABLE audit_activity_daily ADD PRIMARY KEY (day, environment, outcome);

CREATE TEMPORARY TABLE access_sum ON COMMIT DROP AS
    SELECT day, identity_name, min(identity_kind) AS identity_kind, datasource_id,
           classification, sum(events)::bigint AS events
    FROM audit_access_daily GROUP BY 1, 2, 4, 5;
DELETE FROM audit_access_daily;
ALTER TABLE audit_access_daily DROP CONSTRAINT audit_access_daily_pkey;
ALTER TABLE audit_access_daily DROP COLUMN writer;
INSERT INTO audit_access_daily SELECT * FROM access_sum;
ALTER TABLE audit_access_daily ADD PRIMARY KEY (day, identity_name, datasource_id, classification);

ALTER TABLE audit_chain_head DROP COLUMN anchored_seq, DROP COLUMN anchored_at;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0006_fewer_event_indexes"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
