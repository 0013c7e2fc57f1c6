-- One login role and one schema per domain service, in the database this
-- script runs in (POSTGRES_DB=microcore in docker-compose.yml, where the
-- postgres image runs it once, on an empty data volume).
--
-- Each service connects as its own role (DATABASE_URL in
-- docker-compose.yml) and owns exactly its schema: it creates its tables
-- there and can neither create schemas of its own nor touch another
-- service's tables. Roles get no CREATE on the database: only the owner
-- has it by default, and PUBLIC has just CONNECT and TEMPORARY.
--
-- The passwords are the development defaults that docker-compose.yml
-- uses; change them in both places, or later with
-- `ALTER ROLE products PASSWORD '...'`.
--
-- Idempotent: roles belong to the whole cluster, so on a cluster that has
-- them already (a second database, a rerun) they are kept as they are, and
-- a concurrent run that creates one first is not an error either.

DO $$
DECLARE
    service record;
BEGIN
    FOR service IN
        SELECT * FROM (VALUES
            ('products', 'products-dev-password'),
            ('users', 'users-dev-password'),
            ('orders', 'orders-dev-password'),
            ('notifications', 'notifications-dev-password')
        ) AS roles (name, password)
    LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', service.name, service.password);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                RAISE NOTICE 'role % exists, kept', service.name;
        END;
    END LOOP;
END
$$;

CREATE SCHEMA IF NOT EXISTS products AUTHORIZATION products;
CREATE SCHEMA IF NOT EXISTS users AUTHORIZATION users;
CREATE SCHEMA IF NOT EXISTS orders AUTHORIZATION orders;
CREATE SCHEMA IF NOT EXISTS notifications AUTHORIZATION notifications;
