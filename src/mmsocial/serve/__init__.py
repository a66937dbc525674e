"""The search and prediction service: a FastAPI app over trained runs, and its web page.

    from mmsocial.serve import create_app
    app = create_app(["runs/dman-oc"])          # or `mmsocial serve runs/dman-oc [RUN_DIR ...]`

Everything goes through ``systems.load_run`` (the system's serving hook) and ``index/``; this
package holds no model code. docs/serving.md lists every endpoint with an example.
"""

from mmsocial.serve.app import ServiceError, create_app

__all__ = ["create_app", "ServiceError"]
