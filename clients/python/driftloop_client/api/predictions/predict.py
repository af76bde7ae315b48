from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.churn_request import ChurnRequest
from ...models.error import Error
from ...models.prediction import Prediction
from ...types import Response


def _get_kwargs(
    *,
    body: ChurnRequest,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/predict",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(*, client: AuthenticatedClient | Client, response: httpx.Response) -> Error | Prediction | None:
    if response.status_code == 200:
        response_200 = Prediction.from_dict(response.json())

        return response_200

    if response.status_code == 400:
        response_400 = Error.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = Error.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = Error.from_dict(response.json())

        return response_403

    if response.status_code == 413:
        response_413 = Error.from_dict(response.json())

        return response_413

    if response.status_code == 415:
        response_415 = Error.from_dict(response.json())

        return response_415

    if response.status_code == 429:
        response_429 = Error.from_dict(response.json())

        return response_429

    if response.status_code == 500:
        response_500 = Error.from_dict(response.json())

        return response_500

    if response.status_code == 503:
        response_503 = Error.from_dict(response.json())

        return response_503

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(*, client: AuthenticatedClient | Client, response: httpx.Response) -> Response[Error | Prediction]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: ChurnRequest,
) -> Response[Error | Prediction]:
    """Score one record; the response's ``request_id`` identifies it for feedback. A feature
            the model declares nullable may be null or left out (it is recorded as null).

            A 200 means the prediction is recorded (on its way to PostgreSQL through the worker's
            spool); when it cannot be recorded the answer is 503 with ``Retry-After``.


    Args:
        body (ChurnRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Error | Prediction]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: ChurnRequest,
) -> Error | Prediction | None:
    """Score one record; the response's ``request_id`` identifies it for feedback. A feature
            the model declares nullable may be null or left out (it is recorded as null).

            A 200 means the prediction is recorded (on its way to PostgreSQL through the worker's
            spool); when it cannot be recorded the answer is 503 with ``Retry-After``.


    Args:
        body (ChurnRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Error | Prediction
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: ChurnRequest,
) -> Response[Error | Prediction]:
    """Score one record; the response's ``request_id`` identifies it for feedback. A feature
            the model declares nullable may be null or left out (it is recorded as null).

            A 200 means the prediction is recorded (on its way to PostgreSQL through the worker's
            spool); when it cannot be recorded the answer is 503 with ``Retry-After``.


    Args:
        body (ChurnRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Error | Prediction]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: ChurnRequest,
) -> Error | Prediction | None:
    """Score one record; the response's ``request_id`` identifies it for feedback. A feature
            the model declares nullable may be null or left out (it is recorded as null).

            A 200 means the prediction is recorded (on its way to PostgreSQL through the worker's
            spool); when it cannot be recorded the answer is 503 with ``Retry-After``.


    Args:
        body (ChurnRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Error | Prediction
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
