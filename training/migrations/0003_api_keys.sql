-- API keys (training.keys): the secret is never stored, only its sha256; `uses` is counted by the
-- service's workers in batches. A key is revoked, never deleted, so feedback keeps naming it.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    secret_hash  text NOT NULL,
    scopes       text[] NOT NULL,
    rate_per_s   double precision,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    uses         bigint NOT NULL DEFAULT 0,
    last_used_at timestamptz
);

-- Who posted each label (NULL: posted with auth off, or before this column existed).
ALTER TABLE feedback ADD COLUMN key_id text REFERENCES api_keys (id);

-- A correction keeps the label it replaced: one row per replaced label.
CREATE TABLE feedback_history (
    id          bigserial PRIMARY KEY,
    request_id  text NOT NULL REFERENCES predictions (request_id),
    label       smallint NOT NULL,
    raw_label   text,
    key_id      text REFERENCES api_keys (id),
    received_at timestamptz NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now(),
    replaced_by text REFERENCES api_keys (id)
);
CREATE INDEX feedback_history_request ON feedback_history (request_id);
