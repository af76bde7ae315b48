-- Labels in the user's own words: `label` stays the normalised 0/1 the loop trains on, `raw_label`
-- keeps the value as it was sent ("Yes", true, 1), NULL for rows written before this column existed.
ALTER TABLE feedback ADD COLUMN raw_label text;
