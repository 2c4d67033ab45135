-- The transactional outbox for ad-hoc work: the application enqueues the observer's mail inside
-- its own transaction (rolled back: no job, no mail). Run as a role granted observers_enqueue.
BEGIN;
INSERT INTO public.customers (id, name, email) VALUES (9001, 'Ada', 'ada@example.com')
  ON CONFLICT (id) DO NOTHING;
SELECT observers.job_enqueue('order_confirmation',
                             '{"id": 0, "customer_id": 9001, "total": "0.00"}',
                             action_index => 0,
                             unique_key   => 'manual-confirmation:9001');
COMMIT;
