"""The peer a user would write by hand: Starlette + uvicorn calling scikit-learn's predict on a DataFrame.

PIPELINE=/path/pipeline.joblib uvicorn plain_app:app --port 8000
"""

import os

import joblib
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

pipeline = joblib.load(os.environ["PIPELINE"])


async def predict(request: Request) -> JSONResponse:
    records = (await request.json())["records"]
    predictions = pipeline.predict(pd.DataFrame.from_records(records))
    return JSONResponse({"predictions": predictions.tolist()})


async def infer(request: Request) -> JSONResponse:
    """The same model behind the Open Inference Protocol's columns, as a hand-written peer would read them."""
    inputs = (await request.json())["inputs"]
    predictions = pipeline.predict(pd.DataFrame({i["name"]: i["data"] for i in inputs}))
    data = predictions.tolist()
    return JSONResponse({"outputs": [{"name": "predict", "shape": [len(data)], "data": data}]})


app = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/v2/models/bench/infer", infer, methods=["POST"]),
    ]
)
