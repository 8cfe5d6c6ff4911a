"""The REST contract the TTP and the Director share: metadata store, request schemas, routes and
job progress. Each service supplies the orchestrator that carries out phase 2 and 3 requests."""
