-- Everything the station knows about a resource: its verification key, its latest snapshot
-- (opaque bytes), and the sequence of its latest change. Nothing else is stored or indexed:
-- the station must not learn more about a resource than it needs to serve it.
--
-- seq is UNIQUE so a numbering bug fails loudly instead of losing a change; the index it
-- creates is also what replication reads changes in order by.
CREATE TABLE resources (
    id       TEXT   NOT NULL PRIMARY KEY,
    jwk      TEXT   NOT NULL,
    snapshot BYTEA,
    seq      BIGINT NOT NULL UNIQUE
);

-- Snapshots are end-to-end encrypted, so compressing them only spends CPU: store them
-- out of line, uncompressed.
ALTER TABLE resources ALTER COLUMN snapshot SET STORAGE EXTERNAL;

-- The one counter every station process numbers changes from. A write transaction takes its
-- numbers by updating this row as its last statement, so the row lock orders commits by
-- sequence across processes (see store/postgres.rs).
CREATE TABLE zbase_sequence (
    singleton BOOLEAN NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    last      BIGINT  NOT NULL CHECK (last >= 0)
);
INSERT INTO zbase_sequence (singleton, last) VALUES (TRUE, 0);
