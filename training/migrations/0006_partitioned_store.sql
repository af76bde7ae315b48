-- The store partitioned by time (docs/store.md): what grows with traffic is split into one partition
-- per UTC day, so a retrain's window reads only its days and retention drops whole days
-- (`driftloop prune`) instead of deleting rows.
--
-- Three tables grow with traffic, and all three are partitioned on the time of the prediction:
-- predictions on created_at; feedback and feedback_history on a new predicted_at, their
-- prediction's created_at. A day is then three partitions that come and go together, and the
-- foreign key from a label to its prediction runs between partitions of the same day
-- (feedback_p20260301 -> predictions_p20260301). A key from the partitioned feedback to the
-- partitioned predictions would make every drop of a day scan all of feedback first.
--
-- A primary key must hold the partition key: predictions are keyed by (request_id, created_at),
-- labels by (request_id, predicted_at). Request ids stay unique by how they are made (128 random
-- bits per id from the service; backfill skips ids already stored), not by a constraint across
-- days. drift_runs, training_runs, model_versions, deployments, promotions and api_keys grow with
-- runs and people, not traffic, and stay as they are.
--
-- Rows with a time no day partition covers go to each table's DEFAULT partition, so no insert ever
-- fails; creating that day later moves them into it (driftloop_create_day).

ALTER TABLE predictions RENAME TO predictions_0005;
ALTER INDEX predictions_pkey RENAME TO predictions_0005_pkey;
ALTER INDEX predictions_model_time RENAME TO predictions_0005_model_time;
ALTER TABLE feedback RENAME TO feedback_0005;
ALTER INDEX feedback_pkey RENAME TO feedback_0005_pkey;
ALTER TABLE feedback_history RENAME TO feedback_history_0005;
ALTER INDEX feedback_history_pkey RENAME TO feedback_history_0005_pkey;
ALTER INDEX feedback_history_request RENAME TO feedback_history_0005_request;

CREATE TABLE predictions (
    request_id    text NOT NULL,
    model_name    text NOT NULL,
    model_version text NOT NULL,
    features      jsonb NOT NULL,
    score         double precision NOT NULL,
    label         smallint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX predictions_model_time ON predictions (model_name, created_at);

-- The columns of 0001-0005 in their order, then predicted_at.
CREATE TABLE feedback (
    request_id   text NOT NULL,
    label        smallint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    revisions    integer NOT NULL DEFAULT 0,
    raw_label    text,
    key_id       text REFERENCES api_keys (id),
    predicted_at timestamptz NOT NULL,
    PRIMARY KEY (request_id, predicted_at)
) PARTITION BY RANGE (predicted_at);

-- The id keeps its sequence (and where it had got to).
CREATE TABLE feedback_history (
    id           bigint NOT NULL DEFAULT nextval('feedback_history_id_seq'),
    request_id   text NOT NULL,
    label        smallint NOT NULL,
    raw_label    text,
    key_id       text REFERENCES api_keys (id),
    received_at  timestamptz NOT NULL,
    replaced_at  timestamptz NOT NULL DEFAULT now(),
    replaced_by  text REFERENCES api_keys (id),
    predicted_at timestamptz NOT NULL,
    PRIMARY KEY (id, predicted_at)
) PARTITION BY RANGE (predicted_at);
CREATE INDEX feedback_history_request ON feedback_history (request_id);

CREATE TABLE predictions_default PARTITION OF predictions DEFAULT;
CREATE TABLE feedback_default PARTITION OF feedback DEFAULT;
CREATE TABLE feedback_history_default PARTITION OF feedback_history DEFAULT;
ALTER TABLE feedback_default ADD CONSTRAINT feedback_default_prediction
    FOREIGN KEY (request_id, predicted_at) REFERENCES predictions_default (request_id, created_at);
ALTER TABLE feedback_history_default ADD CONSTRAINT feedback_history_default_prediction
    FOREIGN KEY (request_id, predicted_at) REFERENCES predictions_default (request_id, created_at);

-- Create the three partitions of one UTC day (predictions_pYYYYMMDD, feedback_pYYYYMMDD,
-- feedback_history_pYYYYMMDD) unless they exist; returns how many predictions it moved out of the
-- DEFAULT partition (-1: the day existed). Each table is made apart and then attached, which locks
-- the parent only against other schema changes, not against reads and writes; the DEFAULT
-- partitions are locked against writes meanwhile, so no row of the day can land there between the
-- move and the attach. Callers serialise on training.partitions' advisory lock.
CREATE OR REPLACE FUNCTION driftloop_create_day(day date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    suffix text := to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    moved bigint := 0;
BEGIN
    IF to_regclass('predictions_p' || suffix) IS NOT NULL THEN
        RETURN -1;
    END IF;
    LOCK TABLE predictions_default, feedback_default, feedback_history_default IN EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM predictions_default WHERE created_at >= low AND created_at < high) THEN
        CREATE TEMP TABLE driftloop_moving_p ON COMMIT DROP AS
            SELECT * FROM predictions_default WHERE created_at >= low AND created_at < high;
        CREATE TEMP TABLE driftloop_moving_f ON COMMIT DROP AS
            SELECT * FROM feedback_default WHERE predicted_at >= low AND predicted_at < high;
        CREATE TEMP TABLE driftloop_moving_h ON COMMIT DROP AS
            SELECT * FROM feedback_history_default WHERE predicted_at >= low AND predicted_at < high;
        DELETE FROM feedback_history_default WHERE predicted_at >= low AND predicted_at < high;
        DELETE FROM feedback_default WHERE predicted_at >= low AND predicted_at < high;
        DELETE FROM predictions_default WHERE created_at >= low AND created_at < high;
        GET DIAGNOSTICS moved = ROW_COUNT;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE predictions INCLUDING ALL)', 'predictions_p' || suffix);
    EXECUTE format('CREATE TABLE %I (LIKE feedback INCLUDING ALL)', 'feedback_p' || suffix);
    EXECUTE format('CREATE TABLE %I (LIKE feedback_history INCLUDING ALL)',
        'feedback_history_p' || suffix);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (request_id, predicted_at)'
        ' REFERENCES %I (request_id, created_at)',
        'feedback_p' || suffix, 'feedback_p' || suffix || '_prediction', 'predictions_p' || suffix);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (request_id, predicted_at)'
        ' REFERENCES %I (request_id, created_at)',
        'feedback_history_p' || suffix, 'feedback_history_p' || suffix || '_prediction',
        'predictions_p' || suffix);
    EXECUTE format('ALTER TABLE predictions ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        'predictions_p' || suffix, low, high);
    EXECUTE format('ALTER TABLE feedback ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        'feedback_p' || suffix, low, high);
    EXECUTE format('ALTER TABLE feedback_history ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        'feedback_history_p' || suffix, low, high);
    IF moved > 0 THEN
        INSERT INTO predictions SELECT * FROM driftloop_moving_p;
        INSERT INTO feedback SELECT * FROM driftloop_moving_f;
        INSERT INTO feedback_history SELECT * FROM driftloop_moving_h;
        DROP TABLE driftloop_moving_p, driftloop_moving_f, driftloop_moving_h;
    END IF;
    RETURN moved;
END
$$;

-- Every day that holds a prediction gets its partitions, then every row moves over: labels and
-- replaced labels take their prediction's time (every one has its prediction: 0001 and 0003 made
-- that a foreign key).
SELECT driftloop_create_day(day)
FROM (SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS day FROM predictions_0005) AS days
ORDER BY day;

INSERT INTO predictions (request_id, model_name, model_version, features, score, label, created_at)
SELECT request_id, model_name, model_version, features, score, label, created_at
FROM predictions_0005;

INSERT INTO feedback (request_id, label, received_at, revisions, raw_label, key_id, predicted_at)
SELECT f.request_id, f.label, f.received_at, f.revisions, f.raw_label, f.key_id, p.created_at
FROM feedback_0005 f JOIN predictions_0005 p USING (request_id);

INSERT INTO feedback_history
    (id, request_id, label, raw_label, key_id, received_at, replaced_at, replaced_by, predicted_at)
SELECT h.id, h.request_id, h.label, h.raw_label, h.key_id, h.received_at, h.replaced_at,
       h.replaced_by, p.created_at
FROM feedback_history_0005 h JOIN predictions_0005 p USING (request_id);

ALTER SEQUENCE feedback_history_id_seq OWNED BY feedback_history.id;
DROP TABLE feedback_history_0005, feedback_0005, predictions_0005;
