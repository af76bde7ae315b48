-- Who made each champion and why: every promotion (a retrain's, `driftloop train`'s, a person's
-- `driftloop promote`, a `driftloop rollback`) is one row, with the champion it replaced, so a
-- rollback knows where to go back to and the history reads as a log.
ALTER TABLE model_versions ADD COLUMN retired_at timestamptz;

CREATE TABLE promotions (
    id           bigserial PRIMARY KEY,
    model_name   text NOT NULL,
    tag          text NOT NULL REFERENCES model_versions (tag),
    previous_tag text REFERENCES model_versions (tag),
    action       text NOT NULL CHECK (action IN ('retrain', 'promote', 'rollback')),
    by           text NOT NULL,
    reason       text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX promotions_model ON promotions (model_name, at DESC);
