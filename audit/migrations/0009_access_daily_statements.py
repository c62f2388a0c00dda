"""``audit_access_daily`` counts statements, masked and raw apart (docs/audit-explorer.md,
"Who accessed PII").

It held one row per classification a statement read, so a statement reading
``pii.email`` and ``pii.ssn`` counted twice in any total, and nothing told a read
through masks from a read of raw values. A row is now keyed by the set of
classifications the statement read and by whether the sidecar masked any column
of it (``masked``): a total over rows counts each statement once, and the report
can put the raw reads (an identity exempt from masking, or data no rule masks)
apart.

The old rows cannot be split that way, so the table is rebuilt from the events
(the same count ``audit_rollups_rebuild`` does), under a lock that holds
ingestion back meanwhile: seconds for millions of events, as bench/README.md
measures the rebuild.
"""

from django.db import migrations

FORWARD = r"""
LOCK TABLE audit_access_daily IN EXCLUSIVE MODE;
DROP TABLE audit_access_daily;
CREATE TABLE audit_access_daily (
    day date NOT NULL,
    identity_name text NOT NULL,
    identity_kind text NOT NULL,
    datasource_id integer NOT NULL,
    classifications text[] NOT NULL,
    masked boolean NOT NULL,
    writer integer NOT NULL DEFAULT 0,
    events bigint NOT NULL,
    PRIMARY KEY (day, identity_name, datasource_id, classifications, masked, writer)
);
INSERT INTO audit_access_daily (day, identity_name, identity_kind, datasource_id,
                                classifications, masked, events)
SELECT (occurred_at AT TIME ZONE 'UTC')::date, identity_name, min(identity_kind),
       datasource_id,
       ARRAY(SELECT c FROM unnest(classifications) AS c GROUP BY c ORDER BY c COLLATE "C"),
       cardinality(masked_columns) > 0, count(*)
FROM audit_event
WHERE type = 'statement' AND action = 'allow' AND datasource_id IS NOT NULL
  AND cardinality(classifications) > 0
GROUP BY 1, 2, 4, 5, 6;
"""

BACKWARD = r"""
LOCK TABLE audit_access_daily IN EXCLUSIVE MODE;
CREATE TEMPORARY TABLE access_split ON COMMIT DROP AS
    SELECT day, identity_name, min(identity_kind) AS identity_kind, datasource_id,
           c AS classification, writer, sum(events)::bigint AS events
    FROM audit_access_daily, unnest(classifications) AS c
    GROUP BY day, identity_name, datasource_id, c, writer;
DROP TABLE audit_access_daily;
CREATE TABLE audit_access_daily (
    day date NOT NULL,
    identity_name text NOT NULL,
    identity_kind text NOT NULL,
    datasource_id integer NOT NULL,
    classification text NOT NULL,
    events bigint NOT NULL,
    writer integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, identity_name, datasource_id, classification, writer)
);
CREATE INDEX audit_access_daily_classification_idx ON audit_access_daily (classification, day);
INSERT INTO audit_access_daily (day, identity_name, identity_kind, datasource_id,
                                classification, writer, events)
    SELECT day, identity_name, identity_kind, datasource_id, classification, writer, events
    FROM access_split;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0008_changerecord_reason"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
