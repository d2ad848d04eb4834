-- Django
SELECT "auth_user"."id", "auth_user"."password", "auth_user"."last_login", "auth_user"."is_superuser", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."id" = 1 LIMIT 21

SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."username" = 'alice' LIMIT 21

SELECT COUNT(*) AS "__count" FROM "blog_post" WHERE "blog_post"."published" = true

SELECT "blog_post"."id", "blog_post"."title" FROM "blog_post" WHERE ("blog_post"."author_id" = 3 AND "blog_post"."created_at" >= '2024-01-01T00:00:00+00:00'::timestamptz) ORDER BY "blog_post"."created_at" DESC LIMIT 10 OFFSET 20

SELECT "blog_post"."id", "blog_post"."title", "auth_user"."id", "auth_user"."username" FROM "blog_post" INNER JOIN "auth_user" ON ("blog_post"."author_id" = "auth_user"."id") WHERE "blog_post"."id" IN (1, 2, 3, 4, 5)

SELECT "blog_comment"."id", "blog_comment"."body", "blog_comment"."post_id" FROM "blog_comment" WHERE "blog_comment"."post_id" IN (10, 11, 12) ORDER BY "blog_comment"."id" ASC

SELECT (1) AS "a" FROM "auth_user" WHERE "auth_user"."email" = 'a@example.com' LIMIT 1

SELECT "django_session"."session_key", "django_session"."session_data", "django_session"."expire_date" FROM "django_session" WHERE ("django_session"."expire_date" > '2024-05-01T10:00:00.123456+00:00'::timestamptz AND "django_session"."session_key" = 'k3y') LIMIT 21

INSERT INTO "blog_post" ("title", "body", "author_id", "created_at") VALUES ('Hello', 'World', 1, '2024-05-01T10:00:00+00:00'::timestamptz) RETURNING "blog_post"."id"

UPDATE "blog_post" SET "title" = 'New title', "updated_at" = '2024-05-01T10:00:00+00:00'::timestamptz WHERE "blog_post"."id" = 7

DELETE FROM "blog_comment" WHERE "blog_comment"."post_id" IN (7, 8)

SELECT "django_content_type"."id", "django_content_type"."app_label", "django_content_type"."model" FROM "django_content_type" WHERE ("django_content_type"."app_label" = 'auth' AND "django_content_type"."model" = 'user') LIMIT 21

SELECT "auth_permission"."id" FROM "auth_permission" INNER JOIN "auth_user_user_permissions" ON ("auth_permission"."id" = "auth_user_user_permissions"."permission_id") WHERE "auth_user_user_permissions"."user_id" = 1

SELECT DISTINCT "shop_product"."category_id" FROM "shop_product" WHERE "shop_product"."price" BETWEEN 10.00 AND 99.99

SELECT "shop_product"."id", "shop_product"."name" FROM "shop_product" WHERE UPPER("shop_product"."name"::text) LIKE UPPER('%chair%') ORDER BY "shop_product"."name" ASC

SELECT "shop_order"."status", COUNT("shop_order"."id") AS "n", SUM("shop_order"."total") AS "revenue" FROM "shop_order" GROUP BY "shop_order"."status" HAVING COUNT("shop_order"."id") > 5 ORDER BY "revenue" DESC

SELECT "shop_product"."id", "shop_product"."attributes" FROM "shop_product" WHERE ("shop_product"."attributes" -> 'color') = '"red"'::jsonb

SELECT "shop_product"."id" FROM "shop_product" WHERE "shop_product"."tags" @> ARRAY['sale', 'new']::varchar(50)[]

SELECT "shop_product"."id" FROM "shop_product" WHERE "shop_product"."attributes" ? 'size'

SELECT EXISTS(SELECT 1 AS "a" FROM "auth_user" WHERE "auth_user"."username" = 'bob' LIMIT 1) AS "exists"

SELECT "blog_post"."id", (SELECT COUNT(U0."id") FROM "blog_comment" U0 WHERE U0."post_id" = ("blog_post"."id")) AS "comment_count" FROM "blog_post"

INSERT INTO "django_session" ("session_key", "session_data", "expire_date") VALUES ('abc', 'e30=', '2024-06-01T00:00:00+00:00'::timestamptz)

UPDATE "shop_product" SET "stock" = ("shop_product"."stock" - 1) WHERE "shop_product"."id" = 42

SELECT "shop_product"."id" FROM "shop_product" WHERE "shop_product"."id" = 5 FOR UPDATE

SELECT "shop_product"."id" FROM "shop_product" WHERE "shop_product"."id" = 5 FOR NO KEY UPDATE SKIP LOCKED

SAVEPOINT "s140044_x1"

RELEASE SAVEPOINT "s140044_x1"

ROLLBACK TO SAVEPOINT "s140044_x1"

SET TIME ZONE 'UTC'

SELECT "blog_post"."id" FROM "blog_post" WHERE "blog_post"."title"::text ILIKE '%rust%' AND NOT ("blog_post"."id" IN (SELECT U0."post_id" FROM "blog_hidden" U0))

SELECT "blog_post"."id", "blog_post"."created_at" FROM "blog_post" WHERE EXTRACT(YEAR FROM "blog_post"."created_at" AT TIME ZONE 'UTC') = 2024

SELECT DATE_TRUNC('month', "shop_order"."created_at" AT TIME ZONE 'UTC') AS "month", SUM("shop_order"."total") FROM "shop_order" GROUP BY 1 ORDER BY 1

SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."created_at" > (now() - '7 days'::interval)

SELECT COALESCE(SUM("shop_orderline"."quantity"), 0) AS "total" FROM "shop_orderline" WHERE "shop_orderline"."order_id" = 9

-- Rails / ActiveRecord
SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2

SELECT "users".* FROM "users" WHERE "users"."email" = $1 LIMIT $2

SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2

SELECT "posts".* FROM "posts" WHERE "posts"."user_id" = $1 ORDER BY "posts"."created_at" DESC

SELECT "comments".* FROM "comments" WHERE "comments"."post_id" IN ($1, $2, $3)

SELECT COUNT(*) FROM "posts" WHERE "posts"."published" = $1

SELECT "posts".* FROM "posts" INNER JOIN "taggings" ON "taggings"."post_id" = "posts"."id" INNER JOIN "tags" ON "tags"."id" = "taggings"."tag_id" WHERE "tags"."name" = $1

SELECT "posts".* FROM "posts" LEFT OUTER JOIN "comments" ON "comments"."post_id" = "posts"."id" WHERE "comments"."id" IS NULL

INSERT INTO "users" ("email", "name", "created_at", "updated_at") VALUES ($1, $2, $3, $4) RETURNING "id"

UPDATE "users" SET "name" = $1, "updated_at" = $2 WHERE "users"."id" = $3

DELETE FROM "sessions" WHERE "sessions"."updated_at" < $1

SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC

SELECT "ar_internal_metadata".* FROM "ar_internal_metadata" WHERE "ar_internal_metadata"."key" = $1 LIMIT $2

SELECT "users".* FROM "users" WHERE "users"."id" = 5 LIMIT 1

SELECT "users".* FROM "users" WHERE "users"."deleted_at" IS NULL AND "users"."role" IN ('admin', 'editor') ORDER BY "users"."name" ASC LIMIT 25 OFFSET 0

SELECT "articles".* FROM "articles" WHERE (title ILIKE '%postgres%') ORDER BY "articles"."id" DESC LIMIT 10

SELECT SUM("line_items"."price" * "line_items"."quantity") FROM "line_items" WHERE "line_items"."cart_id" = $1

SELECT "products".* FROM "products" WHERE "products"."id" = $1 LIMIT $2 FOR UPDATE

UPDATE "products" SET "lock_version" = $1, "stock" = $2 WHERE "products"."id" = $3 AND "products"."lock_version" = $4

INSERT INTO "events" ("name","payload","created_at") VALUES ('signup', '{"plan":"pro"}', '2024-01-01 00:00:00') ON CONFLICT DO NOTHING RETURNING "id"

INSERT INTO "counters" ("key","value") VALUES ('visits', 1) ON CONFLICT ("key") DO UPDATE SET "value" = "counters"."value" + excluded."value"

SELECT "active_storage_attachments".* FROM "active_storage_attachments" WHERE "active_storage_attachments"."record_type" = $1 AND "active_storage_attachments"."name" = $2 AND "active_storage_attachments"."record_id" = $3

SELECT pg_try_advisory_lock(12345)

SELECT pg_advisory_unlock(12345)

SELECT "delayed_jobs".* FROM "delayed_jobs" WHERE ((run_at <= '2024-05-01 10:00:00' AND (locked_at IS NULL OR locked_at < '2024-05-01 06:00:00') OR locked_by = 'host:1') AND failed_at IS NULL) ORDER BY priority ASC, run_at ASC LIMIT 5

UPDATE "good_jobs" SET "finished_at" = $1 WHERE "good_jobs"."id" = $2

SELECT "users"."id" FROM "users" WHERE "users"."id" > 1000 ORDER BY "users"."id" ASC LIMIT 1000

SELECT MAX("orders"."total") FROM "orders"

SELECT "orders".* FROM "orders" WHERE "orders"."created_at" BETWEEN '2024-01-01' AND '2024-01-31'

BEGIN

COMMIT

ROLLBACK

SHOW max_identifier_length

SELECT t.oid, t.typname FROM pg_type as t WHERE t.typname IN ('int2', 'int4', 'int8', 'oid', 'float4', 'float8', 'bool')

SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = '"users"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum

SET client_min_messages TO 'warning'

SET standard_conforming_strings = on

-- Hibernate / JPA
select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=?

select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1

select o1_0.id,o1_0.customer_id,o1_0.total from orders o1_0 where o1_0.customer_id=$1 order by o1_0.created_at desc offset $2 rows fetch first $3 rows only

select c1_0.id,c1_0.name,o1_0.customer_id,o1_0.id,o1_0.total from customers c1_0 left join orders o1_0 on c1_0.id=o1_0.customer_id where c1_0.id=$1

select count(o1_0.id) from orders o1_0 where o1_0.status=$1

insert into orders (customer_id,status,total,id) values ($1,$2,$3,$4)

update orders set status=$1,total=$2,version=$3 where id=$4 and version=$5

delete from order_lines where order_id=$1

select nextval('orders_seq')

select nextval ('hibernate_sequence')

select p1_0.id,p1_0.name from products p1_0 where p1_0.id in ($1,$2,$3,$4,$5)

select p1_0.id,p1_0.name from products p1_0 where p1_0.id in (1,2,3,4,5,6,7,8,9,10)

select e1_0.id,e1_0.dtype,e1_0.name from employees e1_0 where e1_0.dtype in ('Manager','Engineer')

select a1_0.id from accounts a1_0 where a1_0.id=$1 for update

select a1_0.id from accounts a1_0 where a1_0.id=$1 for share of a1_0 nowait

select i1_0.id,i1_0.sku from items i1_0 where lower(i1_0.sku) like lower($1) escape '\'

select s1_0.id,s1_0.name from stores s1_0 where s1_0.region=$1 and s1_0.active=true

select t1_0.id from tickets t1_0 where t1_0.created_at>=$1 and t1_0.created_at<$2

select b1_0.id,b1_0.title,a1_0.id,a1_0.name from books b1_0 join authors a1_0 on a1_0.id=b1_0.author_id where b1_0.published_year between $1 and $2

select avg(r1_0.rating) from reviews r1_0 where r1_0.product_id=$1

select case when r1_0.rating>=4 then 'good' else 'bad' end,count(*) from reviews r1_0 group by 1

select current_timestamp

select v1_0.id from vehicles v1_0 where exists(select 1 from trips t1_0 where t1_0.vehicle_id=v1_0.id and t1_0.ended_at is null)

-- Prisma
SELECT "public"."User"."id", "public"."User"."email", "public"."User"."name" FROM "public"."User" WHERE "public"."User"."id" = $1 LIMIT $2 OFFSET $3

SELECT "public"."Post"."id", "public"."Post"."title", "public"."Post"."authorId" FROM "public"."Post" WHERE "public"."Post"."authorId" IN ($1,$2,$3) OFFSET $4

SELECT COUNT(*) AS "_count$_all" FROM (SELECT "public"."Post"."id" FROM "public"."Post" WHERE "public"."Post"."published" = $1 OFFSET $2) AS "sub"

INSERT INTO "public"."User" ("email","name") VALUES ($1,$2) RETURNING "public"."User"."id", "public"."User"."email", "public"."User"."name"

UPDATE "public"."Post" SET "published" = $1 WHERE ("public"."Post"."id" = $2 AND 1=1) RETURNING "public"."Post"."id"

DELETE FROM "public"."Post" WHERE ("public"."Post"."id" IN ($1) AND 1=1)

SELECT "public"."User"."id" FROM "public"."User" WHERE ("public"."User"."email" ILIKE $1 AND "public"."User"."deletedAt" IS NULL) ORDER BY "public"."User"."createdAt" DESC LIMIT $2 OFFSET $3

SELECT "t1"."id", "t1"."title", COALESCE("aggr_selection_0_Comment"."_aggr_count_comments", 0) AS "_aggr_count_comments" FROM "public"."Post" AS "t1" LEFT JOIN (SELECT "public"."Comment"."postId", COUNT(*) AS "_aggr_count_comments" FROM "public"."Comment" WHERE 1=1 GROUP BY "public"."Comment"."postId") AS "aggr_selection_0_Comment" ON ("t1"."id" = "aggr_selection_0_Comment"."postId") WHERE 1=1 OFFSET $1

INSERT INTO "public"."Profile" ("bio","userId") VALUES ($1,$2) ON CONFLICT ("userId") DO UPDATE SET "bio" = $3 RETURNING "public"."Profile"."id"

SELECT "public"."Order"."id", "public"."Order"."data" FROM "public"."Order" WHERE ("public"."Order"."data"#>ARRAY['customer','tier']::text[])::jsonb = $1

SELECT 1

SELECT version()

SELECT current_setting('server_version_num')::integer

SELECT "public"."_prisma_migrations"."id", "public"."_prisma_migrations"."checksum" FROM "public"."_prisma_migrations" ORDER BY "public"."_prisma_migrations"."started_at" ASC

-- SQLAlchemy
SELECT users.id, users.name, users.fullname FROM users WHERE users.name = %(name_1)s

SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = 5

SELECT users.id, users.name FROM users WHERE users.name IN ('ed', 'wendy', 'jack')

SELECT users.id, addresses.email_address FROM users JOIN addresses ON users.id = addresses.user_id WHERE addresses.email_address LIKE '%@example.com' ORDER BY users.id

SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users WHERE users.name LIKE 'j%') AS anon_1

SELECT anon_1.user_id, anon_1.cnt FROM (SELECT addresses.user_id AS user_id, count(addresses.id) AS cnt FROM addresses GROUP BY addresses.user_id) AS anon_1 WHERE anon_1.cnt > 1

INSERT INTO users (name, fullname) VALUES ('ed', 'Ed Jones') RETURNING users.id

INSERT INTO users (name, fullname) VALUES ('a', 'A'), ('b', 'B'), ('c', 'C')

UPDATE users SET fullname='Ed Jones Jr.' WHERE users.id = 1

DELETE FROM addresses WHERE addresses.user_id = 1

SELECT users.id, users.name FROM users WHERE users.id = ANY (ARRAY[1, 2, 3])

SELECT users.name, row_number() OVER (PARTITION BY users.dept ORDER BY users.salary DESC) AS anon_1 FROM users

SELECT users.name, sum(users.salary) OVER (ORDER BY users.hired ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM users

SELECT users.id FROM users WHERE users.data -> 'prefs' ->> 'theme' = 'dark'

SELECT users.id FROM users WHERE users.created < CAST('2024-01-01' AS DATE)

SELECT users.id FROM users WHERE lower(users.name) = lower('Ed')

SELECT users.id FROM users ORDER BY users.id LIMIT 10 OFFSET 30

SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace WHERE pg_catalog.pg_class.relname = 'users' AND pg_catalog.pg_class.relkind = ANY (ARRAY['r', 'p', 'f', 'v', 'm'])

SELECT users.id FROM users WHERE users.id IN (SELECT addresses.user_id FROM addresses WHERE addresses.city = 'Berlin')

SELECT users.id FROM users WHERE users.name IS NOT DISTINCT FROM NULL

SELECT users.id FROM users WHERE users.active IS TRUE

SELECT users.id FROM users WHERE users.active = false

SELECT users.id FROM users WHERE (users.a, users.b) IN ((1, 2), (3, 4))

SELECT users.id, greatest(users.a, users.b, 0) FROM users

SELECT users.id, nullif(users.a, 0) FROM users

SELECT string_agg(users.name, ', ' ORDER BY users.name) FROM users

SELECT array_agg(DISTINCT users.dept) FILTER (WHERE users.active) FROM users

-- CTEs
WITH recent AS (SELECT * FROM orders WHERE created_at > '2024-01-01') SELECT customer_id, count(*) FROM recent GROUP BY customer_id

WITH RECURSIVE tree AS (SELECT id, parent_id, name FROM categories WHERE parent_id IS NULL UNION ALL SELECT c.id, c.parent_id, c.name FROM categories c JOIN tree t ON c.parent_id = t.id) SELECT * FROM tree

WITH orders AS (SELECT * FROM orders WHERE status = 'open') SELECT * FROM orders

WITH a AS (SELECT 1 AS x), b AS (SELECT x + 1 AS y FROM a) SELECT * FROM b

WITH moved AS (DELETE FROM queue WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM moved

WITH upd AS (UPDATE accounts SET balance = balance - 10 WHERE id = 1 RETURNING id) SELECT * FROM upd

WITH s AS MATERIALIZED (SELECT * FROM big_table WHERE k = 5) SELECT * FROM s s1 JOIN s s2 ON s1.id = s2.parent

WITH RECURSIVE nums(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM nums WHERE n < 10) SELECT sum(n) FROM nums

-- Window functions
SELECT id, amount, lag(amount) OVER w, lead(amount, 2) OVER w FROM payments WINDOW w AS (PARTITION BY account_id ORDER BY paid_at)

SELECT dept, name, rank() OVER (PARTITION BY dept ORDER BY salary DESC) FROM employees

SELECT id, avg(price) OVER (ORDER BY day RANGE BETWEEN '7 days'::interval PRECEDING AND CURRENT ROW) FROM prices

SELECT ntile(4) OVER (ORDER BY score), percent_rank() OVER (ORDER BY score) FROM results

SELECT first_value(name) OVER (PARTITION BY team ORDER BY joined) FROM members

-- JSON
SELECT data->>'name' FROM documents WHERE data @> '{"type":"invoice"}'

SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name)) FROM products WHERE category_id = 3

SELECT id FROM documents WHERE data #>> '{address,city}' = 'Paris'

SELECT id, jsonb_array_length(data->'items') FROM carts

SELECT key, value FROM documents, jsonb_each(documents.data) WHERE documents.id = 1

SELECT id FROM documents WHERE jsonb_path_exists(data, '$.items[*] ? (@.price > 10)')

SELECT json_agg(t) FROM (SELECT id, name FROM users ORDER BY id LIMIT 5) t

SELECT row_to_json(u) FROM users u WHERE u.id = 1

UPDATE documents SET data = jsonb_set(data, '{status}', '"done"') WHERE id = 4

SELECT id FROM events WHERE payload ? 'error' AND payload->'error'->>'code' = '500'

-- Arrays
SELECT id FROM posts WHERE tags && ARRAY['rust', 'sql']

SELECT id FROM posts WHERE 'rust' = ANY(tags)

SELECT unnest(tags) AS tag, count(*) FROM posts GROUP BY tag

SELECT id, array_length(tags, 1) FROM posts

SELECT id FROM posts WHERE tags @> '{news}'

SELECT id, tags[1] FROM posts WHERE cardinality(tags) > 2

SELECT * FROM generate_series(1, 10) AS g(n)

SELECT * FROM unnest(ARRAY[1,2,3]) WITH ORDINALITY AS t(v, i)

-- Upserts and bulk writes
INSERT INTO inventory (sku, qty) VALUES ('A1', 5), ('B2', 7) ON CONFLICT (sku) DO UPDATE SET qty = inventory.qty + EXCLUDED.qty

INSERT INTO tags (name) VALUES ('x') ON CONFLICT ON CONSTRAINT tags_name_key DO NOTHING

INSERT INTO audit (event, at) SELECT 'login', created_at FROM sessions WHERE user_id = 1

INSERT INTO stats (day, hits) VALUES (CURRENT_DATE, 1) ON CONFLICT (day) DO UPDATE SET hits = stats.hits + 1 WHERE stats.day = EXCLUDED.day

MERGE INTO stock s USING incoming i ON s.sku = i.sku WHEN MATCHED THEN UPDATE SET qty = s.qty + i.qty WHEN NOT MATCHED THEN INSERT (sku, qty) VALUES (i.sku, i.qty)

MERGE INTO accounts a USING (SELECT 1 AS id, 10 AS delta) d ON a.id = d.id WHEN MATCHED AND a.closed THEN DELETE WHEN MATCHED THEN UPDATE SET balance = a.balance + d.delta

UPDATE orders o SET status = 'shipped' FROM shipments s WHERE s.order_id = o.id AND s.sent_at IS NOT NULL

DELETE FROM ONLY logs WHERE created_at < '2023-01-01'

DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.banned

UPDATE counters SET n = n + 1 WHERE id = 1 RETURNING n

-- COPY
COPY users (id, email) FROM STDIN WITH (FORMAT csv)

COPY (SELECT id, email FROM users WHERE active) TO STDOUT WITH (FORMAT csv, HEADER)

COPY public.events TO STDOUT

COPY measurements FROM '/tmp/data.csv' WITH (FORMAT csv)

-- DDL
CREATE TABLE widgets (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(10,2) DEFAULT 0)

CREATE TABLE IF NOT EXISTS public.audit_log (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz DEFAULT now())

ALTER TABLE widgets ADD COLUMN color varchar(20)

ALTER TABLE widgets DROP COLUMN color CASCADE

ALTER TABLE widgets RENAME TO gadgets

ALTER TABLE widgets RENAME COLUMN name TO title

DROP TABLE widgets

DROP TABLE IF EXISTS a, b.c

DROP TABLE widgets CASCADE

CREATE INDEX CONCURRENTLY idx_users_email ON users (lower(email))

CREATE UNIQUE INDEX ON orders (customer_id, number)

DROP INDEX idx_users_email

CREATE VIEW active_users AS SELECT * FROM users WHERE active

CREATE OR REPLACE VIEW v_totals AS SELECT customer_id, sum(total) FROM orders GROUP BY 1

CREATE MATERIALIZED VIEW mv_sales AS SELECT day, sum(amount) FROM sales GROUP BY day

REFRESH MATERIALIZED VIEW CONCURRENTLY mv_sales

CREATE TABLE archive_2023 AS SELECT * FROM orders WHERE created_at < '2024-01-01'

CREATE TABLE measurements_y2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')

CREATE SEQUENCE order_seq START 1000

CREATE FUNCTION add(a int, b int) RETURNS int AS $$ SELECT a + b $$ LANGUAGE sql IMMUTABLE

CREATE EXTENSION IF NOT EXISTS pg_trgm

CREATE SCHEMA reporting

DROP SCHEMA reporting CASCADE

GRANT SELECT ON users TO reporting_role

COMMENT ON TABLE users IS 'application users'

TRUNCATE TABLE events

TRUNCATE a, b RESTART IDENTITY CASCADE

CREATE TEMP TABLE tmp_ids (id int)

SELECT * FROM pg_temp.tmp_ids

-- Transactions and session
BEGIN ISOLATION LEVEL SERIALIZABLE

START TRANSACTION READ ONLY

SET TRANSACTION ISOLATION LEVEL REPEATABLE READ

PREPARE TRANSACTION 'tx1'

COMMIT PREPARED 'tx1'

SET search_path TO app, public

SET LOCAL statement_timeout = '5s'

RESET ALL

SET ROLE reporting_role

SET SESSION AUTHORIZATION alice

DISCARD ALL

-- Utility
EXPLAIN SELECT * FROM users WHERE id = 1

EXPLAIN ANALYZE DELETE FROM users WHERE id = 1

CALL process_orders(10)

DO $$ BEGIN PERFORM 1; END $$

PREPARE get_user(int) AS SELECT * FROM users WHERE id = $1

EXECUTE get_user(1)

DEALLOCATE get_user

LISTEN order_events

NOTIFY order_events, 'new'

VACUUM ANALYZE users

LOCK TABLE accounts IN SHARE MODE

DECLARE c CURSOR FOR SELECT * FROM big_table

FETCH 100 FROM c

CLOSE c

-- Cacheability edge cases
SELECT random()

SELECT * FROM users ORDER BY random() LIMIT 1

SELECT clock_timestamp()

SELECT * FROM events WHERE at > 'today'::date

SELECT * FROM events WHERE at > 'yesterday'

SELECT * FROM events WHERE day = CURRENT_DATE

SELECT current_user

SELECT txid_current()

SELECT pg_sleep(1)

SELECT gen_random_uuid()

SELECT * FROM users TABLESAMPLE BERNOULLI (10)

SELECT * FROM users TABLESAMPLE BERNOULLI (10) REPEATABLE (42)

SELECT * FROM information_schema.tables WHERE table_schema = 'public'

SELECT relname FROM pg_class WHERE relkind = 'r'

SELECT my_schema.slugify(title) FROM posts

SELECT calculate_discount(total) FROM orders WHERE id = 1

SELECT * INTO TEMP snapshot FROM orders

SELECT id, 'it''s' AS q, E'tab\there', $tag$dollar 'quoted'$tag$, B'1010', X'FF', 1e10, -5 FROM t

SELECT "Users".id FROM "Users" WHERE "Users"."Name" = 'x'

SELECT * FROM "Schema"."Table" WHERE "Col" = 1

SELECT a.id FROM a, b, c WHERE a.id = b.a_id AND b.id = c.b_id

SELECT * FROM a NATURAL JOIN b

SELECT * FROM a CROSS JOIN LATERAL (SELECT * FROM b WHERE b.a_id = a.id LIMIT 1) sub

SELECT x FROM t1 UNION SELECT x FROM t2 EXCEPT SELECT x FROM t3 ORDER BY 1

VALUES (1, 'a'), (2, 'b')

TABLE users

SELECT /* strata: ttl=30s, tier=l1 */ id FROM users WHERE id = 1

SELECT id FROM users WHERE id = 1 -- strata: cache=off

/* strata: semantic, intent="best selling products this week" */ SELECT p.name, sum(l.qty) FROM products p JOIN order_lines l ON l.product_id = p.id GROUP BY p.name ORDER BY 2 DESC LIMIT 10

/* strata: tables=orders,customers */ SELECT * FROM report_view

SELECT '/* strata: cache=off */' AS not_a_hint FROM users

SELECT 1; SELECT 2

SELECT * FROM t WHERE x = 1; UPDATE t SET x = 2
