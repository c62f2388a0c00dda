-- Seed for the real-PostgreSQL masking tests: the schema of the fixture bundle
-- with recognisable classified values (none of which may come back masked).
CREATE SCHEMA hr;
CREATE TABLE customers (
    id integer PRIMARY KEY, name text NOT NULL, email text, ssn text, birth_date date,
    phone varchar(32), profile jsonb, tier text, created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id integer PRIMARY KEY, customer_id integer REFERENCES customers (id), total numeric(10,2),
    status text, note text, created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payments (
    id integer PRIMARY KEY, order_id integer REFERENCES orders (id), card_number text,
    card_token text, amount numeric(10,2), paid_on date
);
CREATE TABLE audit_log (id bigint PRIMARY KEY, message text, created_at timestamptz DEFAULT now());
CREATE TABLE products (id integer PRIMARY KEY, name text, price numeric(10,2));
CREATE TABLE hr.employees (
    id integer PRIMARY KEY, name text, salary numeric(12,2), ssn text, badge bigint
);
INSERT INTO customers (id, name, email, ssn, birth_date, phone, profile, tier, created_at)
SELECT i,
       'Customer ' || i,
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'person' || i || '.secret@mail' || i || '.example.org' END,
       lpad((100 + i)::text, 3, '0') || '-4' || (i % 10) || '-' || lpad((5000 + i * 37)::text, 4, '0'),
       date '1960-03-15' + i * 401,
       '+1-555-01' || lpad(i::text, 2, '0') || '-77',
       jsonb_build_object('street', i || ' Hidden Lane', 'vip', i % 3 = 0),
       CASE WHEN i % 2 = 0 THEN 'gold' ELSE 'silver' END,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 day'
FROM generate_series(1, 30) AS i;
INSERT INTO orders (id, customer_id, total, status, note, created_at)
SELECT i, 1 + (i % 30), (i * 13.25)::numeric(10,2),
       (ARRAY['new', 'paid', 'shipped'])[1 + i % 3], 'note ' || i,
       timestamptz '2024-02-01 00:00:00+00' + i * interval '3 hours'
FROM generate_series(1, 60) AS i;
INSERT INTO payments (id, order_id, card_number, card_token, amount, paid_on)
SELECT i, i, '4111' || lpad((222200000000 + i * 7919)::text, 12, '0'),
       'tok_live_' || md5(i::text), (i * 13.25)::numeric(10,2), date '2024-02-02' + i
FROM generate_series(1, 40) AS i;
INSERT INTO audit_log (id, message) SELECT i, 'event ' || i FROM generate_series(1, 5) AS i;
INSERT INTO products (id, name, price) SELECT i, 'product ' || i, i * 2.5 FROM generate_series(1, 10) AS i;
INSERT INTO hr.employees (id, name, salary, ssn, badge)
SELECT i, 'Employee ' || i, 50000 + i * 1234.56, '900-5' || i % 10 || '-' || lpad((3000 + i * 71)::text, 4, '0'),
       770000000 + i * 1013
FROM generate_series(1, 12) AS i;
