"""Daily statement counts per environment and outcome, for the overview.

The overview's chart and its blocked/held counts counted millions of event rows
on every view (~0.5 s at 5 million events); ingestion now keeps this rollup in
the same transaction as the events, as it does ``audit_access_daily``. The
partial index serves the overview's "latest blocked and held" list.

Web processes still running the previous code after this migration store events
without counting them here; ``manage.py audit_rollups_rebuild --since <day of the
deployment>`` recounts those days from the events.
"""

from django.db import migrations, models

CREATE = """
CREATE TABLE audit_activity_daily (
    day date NOT NULL,
    environment text NOT NULL,
    outcome text NOT NULL,
    events bigint NOT NULL,
    PRIMARY KEY (day, environment, outcome)
);
-- The index first: building it locks out inserts until the migration commits, so
-- no event can land between the backfill and the commit uncounted.
CREATE INDEX audit_event_refused_idx ON audit_event (occurred_at, id)
    WHERE type = 'statement' AND outcome IN ('blocked', 'held');
INSERT INTO audit_activity_daily (day, environment, outcome, events)
SELECT (occurred_at AT TIME ZONE 'UTC')::date, environment, outcome, count(*)
FROM audit_event WHERE type = 'statement'
GROUP BY 1, 2, 3;
"""

DROP = """
DROP INDEX IF EXISTS audit_event_refused_idx;
DROP TABLE IF EXISTS audit_activity_daily;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_saved_searches_and_evidence_packs"),
    ]

    operations = [
        migrations.RunSQL(CREATE, DROP),
        migrations.CreateModel(
            name="ActivityDaily",
            fields=[
                ("day", models.DateField(primary_key=True, serialize=False)),
                ("environment", models.TextField()),
                ("outcome", models.TextField()),
                ("events", models.BigIntegerField()),
            ],
            options={
                "db_table": "audit_activity_daily",
                "managed": False,
            },
        ),
    ]
