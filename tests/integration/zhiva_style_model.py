"""A Model API written the way the reference zhiva Model APIs are: FastAPI, pydantic
body parameters, the reference decoder ``bytes(json.loads(instance))``, and results
returned as ``orjson.dumps(result)`` from endpoints declared with ORJSONResponse, which
double-encodes them. The proxy must work with it unchanged (drop-in compatibility).

Run: ``python zhiva_style_model.py PORT``.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from typing import Any

import numpy as np
import orjson
import pydicom
import uvicorn
from fastapi import Body, FastAPI
from fastapi.responses import RedirectResponse

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # newer FastAPI deprecates ORJSONResponse
    from fastapi.responses import ORJSONResponse

app = FastAPI(title="zhiva-style model")


@app.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")


def decode(instance: str) -> pydicom.Dataset:
    # Exactly the reference decoder of the compatibility contract (section 5.1).
    return pydicom.dcmread(io.BytesIO(bytes(json.loads(instance))))


def hounsfield(dataset: pydicom.Dataset) -> np.ndarray[Any, np.dtype[np.float64]]:
    pixels = dataset.pixel_array.astype(np.float64)
    return pixels * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)


def nest(datasets: list[pydicom.Dataset], per_instance: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for dataset in sorted(datasets, key=lambda d: int(d.InstanceNumber)):
        study = result.setdefault(str(dataset.StudyInstanceUID), {})
        series = study.setdefault(str(dataset.SeriesInstanceUID), {})
        series[str(dataset.SOPInstanceUID)] = per_instance(dataset)
    return result


def segments(dataset: pydicom.Dataset) -> dict[str, Any]:
    mask = (hounsfield(dataset) > -300).astype(int).tolist()
    return {"segments": [{"points": mask, "color": "orange", "className": "Dense"}]}


def rois(dataset: pydicom.Dataset) -> dict[str, Any]:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    box = [[1, 1], [columns - 2, 1], [columns - 2, rows - 2], [1, rows - 2]]
    return {"rois": [{"points": box, "color": "red", "className": "Frame"}]}


def metadata(dataset: pydicom.Dataset) -> dict[str, Any]:
    mean = round(float(hounsfield(dataset).mean()), 1)
    return {"metadata": [{"dataType": "number", "value": mean, "title": "Mean HU"}]}


def as_list(items: list[str] | str) -> list[pydicom.Dataset]:
    return [decode(item) for item in ([items] if isinstance(items, str) else items)]


@app.post("/segmentation", response_class=ORJSONResponse)
async def segmentation(items: list[str] | str = Body(...)) -> Any:  # noqa: B008
    return orjson.dumps(nest(as_list(items), segments))


@app.post("/annotation", response_class=ORJSONResponse)
async def annotation(items: list[str] | str = Body(...)) -> Any:  # noqa: B008
    return orjson.dumps(nest(as_list(items), rois))


@app.post("/prediction", response_class=ORJSONResponse)
async def prediction(items: list[str] | str = Body(...)) -> Any:  # noqa: B008
    return orjson.dumps(nest(as_list(items), metadata))


@app.post("/multiple-series-endpoint/predict", response_class=ORJSONResponse)
async def multiple_series(items: dict[str, dict[str, list[str]]] = Body(...)) -> Any:  # noqa: B008
    first = [decode(item) for item in items["series-one"]["data"]]
    second = [decode(item) for item in items["series-two"]["data"]]
    study = str(first[0].StudyInstanceUID)
    return orjson.dumps(
        {
            study: {
                "metadata": [
                    {"dataType": "number", "value": len(first), "title": "Series one slices"},
                    {"dataType": "number", "value": len(second), "title": "Series two slices"},
                ]
            }
        }
    )


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
