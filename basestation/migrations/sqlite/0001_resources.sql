-- Everything the station knows about a resource: its verification key, its latest snapshot
-- (opaque bytes), and the sequence of its latest change. Nothing else is stored or indexed:
-- the station must not learn more about a resource than it needs to serve it.
--
-- STRICT keeps SQLite from silently turning a snapshot into text or a sequence into a string.
CREATE TABLE resources (
    id       TEXT    NOT NULL PRIMARY KEY,
    jwk      TEXT    NOT NULL,
    snapshot BLOB,
    seq      INTEGER NOT NULL
) STRICT;

-- Replication and backups read changes in sequence order; the writer gives every change a
-- distinct number, and uniqueness makes a bug there fail loudly instead of losing a change.
CREATE UNIQUE INDEX resources_by_seq ON resources (seq);

-- Marks the file as a zbase store (the bytes "zbas"), so a station refuses a database written
-- by something else instead of adding its tables to it.
PRAGMA application_id = 2053267827;
