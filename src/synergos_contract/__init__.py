"""The REST contract the TTP and the Director share: metadata store (typed records out), request
schemas, public response shapes, routes, job progress, and the planning of phase 2 and 3 work.
Each service supplies the orchestrator that runs the planned jobs: in-process (TTP) or queued on
the MQ (Director)."""
