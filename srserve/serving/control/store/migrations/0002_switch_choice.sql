-- The load-aware switch's choice for a job, made at admission (srserve.serving.control.pricing.load_switch):
-- the cap on its sketch steps and why (adaptive, balance, slo, floor, unmeasured).
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS switch_cap integer;
ALTER TABLE srserve_jobs ADD COLUMN IF NOT EXISTS switch_reason text;
