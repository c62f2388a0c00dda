"""TRUNCATE is refused on every partition of ``audit_event``, not only on the parent.

``audit_event_no_truncate`` is a statement-level trigger on the partitioned table,
and PostgreSQL copies only row-level triggers to partitions: ``TRUNCATE`` of one
month, or of one environment's leaf of it, emptied it past the append-only rule
(found by a review). Every partition now carries the trigger: those that exist,
here, and each one ``audit_partition_ensure`` makes from now on.
"""

from django.db import migrations

# audit_partition_ensure as 0002 made it, plus the trigger on what it creates.
ENSURE = r"""
CREATE OR REPLACE FUNCTION audit_partition_ensure(p_at timestamptz, p_environment text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m_start timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');
    m_end timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC') + interval '1 month';
    month_name text := 'audit_event_' || to_char(m_start, '"y"YYYY"m"MM');
    leaf_name text := month_name || '_' || p_environment;
BEGIN
    IF to_regclass(quote_ident(month_name)) IS NOT NULL
       AND (p_environment = '' OR to_regclass(quote_ident(leaf_name)) IS NOT NULL) THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('audit_partition_ensure'));
    IF to_regclass(quote_ident(month_name)) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF audit_event FOR VALUES FROM (%L) TO (%L) '
                'PARTITION BY LIST (environment)',
                month_name, m_start::text || '+00', m_end::text || '+00');
            EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT',
                month_name || '_default', month_name);
            PERFORM audit_partition_refuse_truncate(month_name);
            PERFORM audit_partition_refuse_truncate(month_name || '_default');
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'audit partition % not created: %', month_name, SQLERRM;
            RETURN;
        END;
    END IF;
    IF p_environment <> '' AND to_regclass(quote_ident(leaf_name)) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES IN (%L)',
                leaf_name, month_name, p_environment);
            PERFORM audit_partition_refuse_truncate(leaf_name);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'audit partition % not created: %', leaf_name, SQLERRM;
        END;
    END IF;
END
$$;
"""

FORWARD = (
    r"""
CREATE FUNCTION audit_partition_refuse_truncate(p_table text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = to_regclass(quote_ident(p_table)) AND tgname = 'audit_event_no_truncate'
    ) THEN
        EXECUTE format(
            'CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION audit_event_refuse_change()', p_table);
    END IF;
END
$$;
"""
    + ENSURE
    + r"""
DO $$
DECLARE part name;
BEGIN
    -- By name: a regclass's text is already quoted where the name needs it (an
    -- environment slug with a hyphen), and would be quoted twice.
    FOR part IN SELECT c.relname FROM pg_partition_tree('audit_event') t
                JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0 LOOP
        PERFORM audit_partition_refuse_truncate(part);
    END LOOP;
END
$$;
"""
)

BACKWARD = (
    r"""
DO $$
DECLARE part name;
BEGIN
    FOR part IN SELECT c.relname FROM pg_partition_tree('audit_event') t
                JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0 LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS audit_event_no_truncate ON %I', part);
    END LOOP;
END
$$;
"""
    # 0002's function again: the same without the calls below.
    + "\n".join(line for line in ENSURE.splitlines() if "refuse_truncate" not in line)
    + "\nDROP FUNCTION IF EXISTS audit_partition_refuse_truncate(text);\n"
)


class Migration(migrations.Migration):
    dependencies = [("audit", "0009_access_daily_statements")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
