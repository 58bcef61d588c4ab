"""phh engine. Imports no UI code. Subpackages, bottom-up as the data flows (each imports only
its own layer and those below; an import-linter `layers` contract in pyproject.toml holds it):

- `models/`: the shape of every file and input (pydantic), the closed vocabularies;
- `store/`: the runs store on disk (paths, atomic files, views, index, logs, catalog);
- `derive/`: readiness, selection and scoreboards from the views (pure);
- `runners/`: executing attempts (local runner, Codex command line, workspaces, Ray);
- `interfaces/`: submit, the drop folder, CLI/API operations, the HTTP API;
- `engine/`: the loop and its collaborators (actions, health, GC).

Tooling outside the layers: `schemas` (JSON Schemas from the models), `standin` (scripted
stand-in for the model API). See docs/architecture.md#layers.
"""

__version__ = "0.1.0"
