"""What the service's API routes promise over HTTP: body limits, one error shape, and the OpenAPI
document (``/docs.json``) that says both.

Every API route (``/predict``, ``/predict_batch``, ``/feedback``, ``/feedback_batch``) takes only
``application/json`` bodies up to :func:`body_limit` bytes and answers every error as
``{"error": "<what went wrong>"}``, a 400 with ``"detail"``: the list of field errors
(``loc``, ``msg``, ``type``), as pydantic and BentoML spell them. :mod:`bentos.hotpath` enforces it
in front of BentoML's app; :func:`openapi_document` patches BentoML's generated document so that it
describes exactly that. BentoML's own document flattens unions to their first member (a feedback
label became a boolean, a nullable feature lost its null), types the 400 ``detail`` as a string,
leaves request bodies optional and names no 413, 415 or 503: a client generated from it fails on the
answers it must handle.

An error answer is documented by one :class:`ErrorResponse` line in :data:`ERRORS`; a header it
always carries by one entry in :data:`HEADERS`.

BentoML publishes the service's schemas in more places: ``/schema.json`` (its own format, which
``bentoml.SyncHTTPClient`` reads) and, in a built Bento, ``apis/openapi.yaml`` and
``apis/schema.json``. The service answers BentoML's ``openapi_spec`` with :func:`served_document`
and its ``schema()`` with :func:`service_schema`, so that every copy says what ``/docs.json`` says.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import bentoml

__all__ = [
    "AUTH_ERRORS",
    "ERRORS",
    "HEADERS",
    "MAX_FEEDBACK_LABELS",
    "MAX_ITEM_BYTES",
    "RATE_HEADERS",
    "Document",
    "ErrorResponse",
    "bentoml_document",
    "body_limit",
    "openapi_document",
    "served_document",
    "service_schema",
]

# A record or a label is a few hundred bytes; this leaves room for long category names, escapes
# and whitespace. A batch body may hold this many bytes per item it may carry.
MAX_ITEM_BYTES = 16 * 1024
# The most labels one /feedback_batch request carries (the most records of /predict_batch is the
# DRIFTLOOP_BATCH_MAX_RECORDS setting).
MAX_FEEDBACK_LABELS = 1000

REF = "#/components/schemas/{model}"
# What BentoML appends to the names of the classes it wraps each API's models in.
IO_SUFFIX = "IODescriptor"
# BentoML's one tag for every API route, replaced by TAGS.
BENTOML_API_TAG = "Service APIs"
TAGS = {
    "predictions": {"name": "Predictions", "description": "Score records; each is recorded."},
    "feedback": {
        "name": "Feedback",
        "description": "The ground truth for earlier predictions, by their request_id.",
    },
}
ERROR_SCHEMA = "Error"
FIELD_ERROR_SCHEMA = "FieldError"
# BentoML's three error components, each with ``detail`` typed as a string: replaced by ERROR_SCHEMA.
_BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")

SCHEMAS: dict[str, dict[str, Any]] = {
    ERROR_SCHEMA: {
        "type": "object",
        "title": ERROR_SCHEMA,
        "description": "Every error answer of the API routes.",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "what went wrong, for a person to read"},
            "detail": {
                "type": "array",
                "items": {"$ref": REF.format(model=FIELD_ERROR_SCHEMA)},
                "description": "400 only: one item per problem in the body",
            },
            "request_id": {
                "type": "string",
                "description": "404 only: the request_id that names no prediction",
            },
        },
    },
    FIELD_ERROR_SCHEMA: {
        "type": "object",
        "title": FIELD_ERROR_SCHEMA,
        "description": "One problem in a request body (pydantic's error, without the input).",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": 'where: field names and list indexes, e.g. ["records", 3, "age"]; '
                "empty for the body as a whole (malformed JSON)",
            },
            "msg": {"type": "string", "description": "what was expected"},
            "type": {"type": "string", "description": "pydantic's error type, e.g. missing"},
            "url": {"type": "string", "description": "pydantic's page on this error type"},
        },
    },
}

HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "seconds to wait before sending the request again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": "how to authenticate: Bearer (send Authorization: Bearer <API key>)",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {
        "description": "requests this API key may send at once (its bucket) to this worker",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-RateLimit-Remaining": {
        "description": "requests it may still send now",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "seconds until its bucket is full again",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@dataclass(frozen=True)
class ErrorResponse:
    """One error answer, documented with the shared error schema.

    ``description`` may name ``{too_large}``: what is too large for the route (its body limit, and
    for a batch route the most records or labels one request carries).
    """

    status: int
    description: str
    # The APIs (by name) that send it; None: every API route.
    apis: frozenset[str] | None = None
    # Headers it always carries, by name in HEADERS.
    headers: tuple[str, ...] = ()

    def response(self, too_large: str) -> dict[str, Any]:
        """The OpenAPI response object, for a route where ``too_large`` is too large."""
        answer: dict[str, Any] = {
            "description": self.description.format(too_large=too_large),
            "content": {"application/json": {"schema": {"$ref": REF.format(model=ERROR_SCHEMA)}}},
        }
        if self.headers:
            answer["headers"] = {name: HEADERS[name] for name in self.headers}
        return answer


FEEDBACK_APIS = frozenset({"feedback", "feedback_batch"})

# Every error an API route answers, in the document's order.
ERRORS: tuple[ErrorResponse, ...] = (
    ErrorResponse(
        400,
        "The body is not JSON, or not valid for this route: `detail` lists each problem (`loc` "
        "names the field, `msg` says what was expected). Nothing was recorded.",
    ),
    ErrorResponse(
        404,
        "No prediction carries this `request_id` (after waiting for predictions still on their "
        "way to the store); nothing was recorded.",
        apis=frozenset({"feedback"}),
    ),
    ErrorResponse(
        413,
        "The body is {too_large}. Nothing was recorded.",
    ),
    ErrorResponse(
        415,
        "The body was not sent as `application/json` (or the `Content-Type` header holds a "
        "byte that is not printable ASCII). Nothing was recorded.",
    ),
    ErrorResponse(
        500,
        "A bug, never an answer to bad input: the server log has the details. Nothing was "
        "recorded.",
    ),
    ErrorResponse(
        503,
        "Overloaded, starting or stopping, or the predictions or feedback cannot be recorded now "
        "(the store is unreachable and, for predictions, the spool is full). Nothing was "
        "recorded: send it again after `Retry-After` seconds.",
        headers=("Retry-After",),
    ),
    ErrorResponse(
        504,
        "The feedback store took longer than the service's request timeout. The labels may or "
        "may not be recorded: sending them again is safe (feedback is idempotent).",
        apis=FEEDBACK_APIS,
    ),
)


# What the routes other than the API's answer a Content-Type that is not printable ASCII (which
# BentoML's access log would crash on).
UNREADABLE_CONTENT_TYPE = ErrorResponse(
    415, "The `Content-Type` header holds a byte that is not printable ASCII."
)


# The answers of API keys and rate limits (bentos.access), documented when DRIFTLOOP_AUTH=on.
AUTH_ERRORS: tuple[ErrorResponse, ...] = (
    ErrorResponse(
        401,
        "No API key, or not a valid one (unknown, wrong or revoked). Nothing was recorded.",
        headers=("WWW-Authenticate",),
    ),
    ErrorResponse(
        403,
        "The API key lacks this route's scope. Nothing was recorded.",
        headers=RATE_HEADERS,
    ),
    ErrorResponse(
        429,
        "The API key sent more than its rate. Nothing was recorded: send it again after "
        "`Retry-After` seconds.",
        headers=("Retry-After", *RATE_HEADERS),
    ),
    ErrorResponse(
        503,
        "The API key cannot be checked now: the store is unavailable and this worker has not "
        "checked the key lately. Nothing was recorded: send it again after `Retry-After` seconds.",
        headers=("Retry-After",),
    ),
)


# What a batch route carries, by API name.
BATCH_ITEMS = {"predict_batch": "records", "feedback_batch": "labels"}


def items_per_request(api: str, max_records: int) -> int:
    """The most records or labels one request to ``api`` carries (1 for the single routes)."""
    if api == "predict_batch":
        return max_records
    if api == "feedback_batch":
        return MAX_FEEDBACK_LABELS
    return 1


def body_limit(api: str, max_records: int) -> int:
    """The largest body ``api`` reads, in bytes: ``MAX_ITEM_BYTES`` per item it may carry."""
    return MAX_ITEM_BYTES * items_per_request(api, max_records)


def too_large(api: str, max_records: int) -> str:
    """What a body too large for ``api`` is, e.g. "over 16,384 bytes"."""
    text = f"over {body_limit(api, max_records):,} bytes"
    if api in BATCH_ITEMS:
        text += f", or carries more than {items_per_request(api, max_records):,} {BATCH_ITEMS[api]}"
    return text


def _inline(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """``model``'s JSON schema, its nested models moved into the document's components."""
    schema: dict[str, Any] = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    return schema


def _component(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """A ``$ref`` to ``model``'s schema, stored in the components under the model's own name.

    BentoML wraps each API's models in classes named ``<model>IODescriptor``; the document uses
    the models' names (``ChurnRequest``, ``Prediction``, ``FeedbackRequest``), so a generated client
    gets one class per model, named as the service names it. A list (``/predict_batch``'s answer)
    stays inline: an array of references.
    """
    schema = _inline(model, schemas)
    if schema.get("type") != "object":
        schema.pop("title", None)
        return schema
    name = str(schema["title"]).removesuffix(IO_SUFFIX)
    schema["title"] = name
    schemas[name] = schema
    return {"$ref": REF.format(model=name)}


def _refs(node: Any) -> set[str]:
    """The component names ``node`` refers to."""
    if isinstance(node, dict):
        found = {str(node["$ref"]).rpartition("/")[2]} if "$ref" in node else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _prune(document: dict[str, Any]) -> None:
    """Drop the component schemas no route uses (BentoML's ``...IODescriptor`` copies, its task
    status): a client generator makes a class of each."""
    schemas: dict[str, Any] = document["components"]["schemas"]
    used: set[str] = set()
    todo = _refs(document["paths"])
    while todo:
        name = todo.pop()
        if name not in used and name in schemas:
            used.add(name)
            todo |= _refs(schemas[name])
    for name in [name for name in schemas if name not in used]:
        del schemas[name]


def bentoml_document(service: bentoml.Service[Any]) -> dict[str, Any]:
    """BentoML's own OpenAPI document of ``service``, whatever ``openapi_spec`` says in a subclass."""
    import bentoml

    generate = cast(Callable[[Any], Any], bentoml.Service.openapi_spec.fget)
    document: dict[str, Any] = generate(service).asdict()
    return document


def openapi_document(service: bentoml.Service[Any], max_records: int) -> dict[str, Any]:
    """BentoML's OpenAPI document of ``service``, describing what the API routes really answer.

    Each API route's request body is required, ``application/json`` only, with the input model's
    full JSON schema (unions and nulls kept); its 200 body is the output model's; its errors are
    the :data:`ERRORS` that apply to it, all with the shared ``Error`` schema. ``/readyz`` also
    documents its 503. Each API's ``operationId`` is its name (``predict``, ``feedback_batch``)
    and its tag :data:`TAGS`' (a generated client's function and module names).
    """
    document = bentoml_document(service)
    # Pydantic writes JSON Schema 2020-12 (a union with null, lists of examples): OpenAPI 3.1's.
    document["openapi"] = "3.1.0"
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for stale in _BENTOML_ERROR_SCHEMAS:
        schemas.pop(stale, None)
    schemas.update(copy.deepcopy(SCHEMAS))
    document["tags"] = [
        *TAGS.values(),
        *(tag for tag in document.get("tags", []) if tag["name"] != BENTOML_API_TAG),
    ]
    api_routes = {api.route for api in service.apis.values()}
    for name, api in service.apis.items():
        operation = document["paths"][api.route]["post"]
        operation["operationId"] = name
        operation["tags"] = [TAGS["feedback" if name in FEEDBACK_APIS else "predictions"]["name"]]
        request = _component(api.input_spec, schemas)
        if name == "predict_batch":
            schemas[request["$ref"].rpartition("/")[2]]["properties"]["records"]["maxItems"] = (
                max_records
            )
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": request}},
        }
        responses: dict[str, Any] = {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": _component(api.output_spec, schemas)}},
            }
        }
        for error in ERRORS:
            if error.apis is None or name in error.apis:
                responses[str(error.status)] = error.response(too_large(name, max_records))
        operation["responses"] = responses
    readyz = document["paths"].get("/readyz", {}).get("get")
    if readyz is not None:
        readyz["responses"]["503"] = {
            "description": "Not ready: predictions could not be recorded now (the store is "
            "unreachable and the spool is past 90% full), or the service is starting or stopping.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    # The hot path refuses an unreadable Content-Type on every route, these included.
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method != "post" or path not in api_routes:
                operation.setdefault("responses", {})["415"] = UNREADABLE_CONTENT_TYPE.response("")
    _prune(document)
    return document


class Document(dict[str, Any]):
    """An OpenAPI document where BentoML expects its own: it reads one with ``asdict()`` (its
    ``/docs.json`` route) or dumps it as YAML (``bentoml build`` writes ``apis/openapi.yaml``)."""

    def asdict(self) -> dict[str, Any]:
        return dict(self)


def _dump_document(dumper: Any, document: Document) -> Any:
    return dumper.represent_dict(dict(document))


def _settings() -> Any:
    from training.settings import get_settings

    return get_settings()


def served_document(service: bentoml.Service[Any]) -> Document:
    """The document ``/docs.json`` serves under this process's settings: :func:`openapi_document`
    for ``DRIFTLOOP_BATCH_MAX_RECORDS``, with the API keys' schemes and answers when
    ``DRIFTLOOP_AUTH=on`` (:func:`bentos.access.secure_document`).

    The service answers BentoML's ``openapi_spec`` with it, so that every copy BentoML makes of
    its document says the same: ``bentoml build`` writes it to the Bento's ``apis/openapi.yaml``.
    """
    import yaml

    from bentos.access import secure_document

    # BentoML dumps its document with PyYAML's default dumper, which takes exact types only.
    yaml.add_representer(Document, _dump_document)
    settings = _settings()
    document = openapi_document(service, settings.batch_max_records)
    if settings.auth == "on":
        document = secure_document(document)
    return Document(document)


def _resolve(node: Any, schemas: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` to a component replaced by (a copy of) its schema."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(schemas[str(node["$ref"]).rpartition("/")[2]], schemas)
        return {key: _resolve(value, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, schemas) for value in node]
    return node


def service_schema(service: bentoml.Service[Any], schema: dict[str, Any]) -> dict[str, Any]:
    """BentoML's service schema (``schema``: ``/schema.json`` and the Bento's
    ``apis/schema.json``, what BentoML's own clients and index page read) with each API route's
    input and output schemas taken from :func:`openapi_document`, references resolved (BentoML's
    flattens a union to its first member: a feedback label would be a boolean only)."""
    document = openapi_document(service, _settings().batch_max_records)
    schemas = document["components"]["schemas"]
    for route in schema["routes"]:
        operation = document["paths"][route["route"]]["post"]
        route["input"] = _resolve(
            operation["requestBody"]["content"]["application/json"]["schema"], schemas
        )
        output = operation["responses"]["200"]["content"]["application/json"]["schema"]
        # BentoML's streaming and media-type flags, which no JSON schema carries.
        extras = {k: v for k, v in route["output"].items() if k in ("is_stream", "media_type")}
        route["output"] = {**_resolve(output, schemas), **extras}
    return schema
