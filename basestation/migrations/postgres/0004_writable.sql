-- Whether any pod may number a write: false once this site handed over or learned of a later
-- epoch. It sits on the sequence row that every write transaction updates, so a demotion's
-- update waits for every numbering in flight, and every numbering after it sees the flag and
-- writes nothing, on every pod at once (docs/REPLICATION.md).
ALTER TABLE zbase_sequence ADD COLUMN writable BOOLEAN NOT NULL DEFAULT TRUE;
-- A store already fenced before this migration stays fenced.
UPDATE zbase_sequence SET writable = NOT EXISTS (SELECT 1 FROM zbase_site WHERE role <> 'primary');
