from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error import Error
from ...models.feedback_receipt import FeedbackReceipt
from ...models.feedback_request import FeedbackRequest
from ...types import Response


def _get_kwargs(
    *,
    body: FeedbackRequest,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/feedback",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Error | FeedbackReceipt | None:
    if response.status_code == 200:
        response_200 = FeedbackReceipt.from_dict(response.json())

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

    if response.status_code == 404:
        response_404 = Error.from_dict(response.json())

        return response_404

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

    if response.status_code == 504:
        response_504 = Error.from_dict(response.json())

        return response_504

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[Error | FeedbackReceipt]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: FeedbackRequest,
) -> Response[Error | FeedbackReceipt]:
    """Record the ground truth for an earlier prediction (the latest different label wins).

            ``label`` is the outcome as the training data spells it (e.g. "Yes"/"No"), or 1/0, or
            true/false; it is stored as 0/1 with the value sent kept beside it, and the receipt gives
            the 0/1. An unknown label answers 400 naming what is accepted; an unknown ``request_id``
            404 with ``{"error": ...}``. The response is built here because BentoML 1.4 renders the
            body of a raised 4xx exception as a one-element list.


    Args:
        body (FeedbackRequest): The ground truth for one prediction; unknown fields are refused
            like the prediction's.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Error | FeedbackReceipt]
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
    body: FeedbackRequest,
) -> Error | FeedbackReceipt | None:
    """Record the ground truth for an earlier prediction (the latest different label wins).

            ``label`` is the outcome as the training data spells it (e.g. "Yes"/"No"), or 1/0, or
            true/false; it is stored as 0/1 with the value sent kept beside it, and the receipt gives
            the 0/1. An unknown label answers 400 naming what is accepted; an unknown ``request_id``
            404 with ``{"error": ...}``. The response is built here because BentoML 1.4 renders the
            body of a raised 4xx exception as a one-element list.


    Args:
        body (FeedbackRequest): The ground truth for one prediction; unknown fields are refused
            like the prediction's.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Error | FeedbackReceipt
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: FeedbackRequest,
) -> Response[Error | FeedbackReceipt]:
    """Record the ground truth for an earlier prediction (the latest different label wins).

            ``label`` is the outcome as the training data spells it (e.g. "Yes"/"No"), or 1/0, or
            true/false; it is stored as 0/1 with the value sent kept beside it, and the receipt gives
            the 0/1. An unknown label answers 400 naming what is accepted; an unknown ``request_id``
            404 with ``{"error": ...}``. The response is built here because BentoML 1.4 renders the
            body of a raised 4xx exception as a one-element list.


    Args:
        body (FeedbackRequest): The ground truth for one prediction; unknown fields are refused
            like the prediction's.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Error | FeedbackReceipt]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: FeedbackRequest,
) -> Error | FeedbackReceipt | None:
    """Record the ground truth for an earlier prediction (the latest different label wins).

            ``label`` is the outcome as the training data spells it (e.g. "Yes"/"No"), or 1/0, or
            true/false; it is stored as 0/1 with the value sent kept beside it, and the receipt gives
            the 0/1. An unknown label answers 400 naming what is accepted; an unknown ``request_id``
            404 with ``{"error": ...}``. The response is built here because BentoML 1.4 renders the
            body of a raised 4xx exception as a one-element list.


    Args:
        body (FeedbackRequest): The ground truth for one prediction; unknown fields are refused
            like the prediction's.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Error | FeedbackReceipt
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
