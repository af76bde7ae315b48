from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error import Error
from ...models.feedback_batch_request import FeedbackBatchRequest
from ...models.feedback_item_receipt import FeedbackItemReceipt
from ...types import Response


def _get_kwargs(
    *,
    body: FeedbackBatchRequest,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/feedback_batch",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Error | list[FeedbackItemReceipt] | None:
    if response.status_code == 200:
        response_200 = []
        _response_200 = response.json()
        for response_200_item_data in _response_200:
            response_200_item = FeedbackItemReceipt.from_dict(response_200_item_data)

            response_200.append(response_200_item)

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

    if response.status_code == 504:
        response_504 = Error.from_dict(response.json())

        return response_504

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[Error | list[FeedbackItemReceipt]]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: FeedbackBatchRequest,
) -> Response[Error | list[FeedbackItemReceipt]]:
    """Record up to 1,000 labels in one transaction; one receipt per label, in order.

            Each label is spelt as ``/feedback`` takes it; one unknown label refuses the whole batch
            (400, naming its index). A label naming no stored prediction is reported ``not_found`` and
            the others are stored.


    Args:
        body (FeedbackBatchRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Error | list[FeedbackItemReceipt]]
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
    body: FeedbackBatchRequest,
) -> Error | list[FeedbackItemReceipt] | None:
    """Record up to 1,000 labels in one transaction; one receipt per label, in order.

            Each label is spelt as ``/feedback`` takes it; one unknown label refuses the whole batch
            (400, naming its index). A label naming no stored prediction is reported ``not_found`` and
            the others are stored.


    Args:
        body (FeedbackBatchRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Error | list[FeedbackItemReceipt]
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: FeedbackBatchRequest,
) -> Response[Error | list[FeedbackItemReceipt]]:
    """Record up to 1,000 labels in one transaction; one receipt per label, in order.

            Each label is spelt as ``/feedback`` takes it; one unknown label refuses the whole batch
            (400, naming its index). A label naming no stored prediction is reported ``not_found`` and
            the others are stored.


    Args:
        body (FeedbackBatchRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Error | list[FeedbackItemReceipt]]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: FeedbackBatchRequest,
) -> Error | list[FeedbackItemReceipt] | None:
    """Record up to 1,000 labels in one transaction; one receipt per label, in order.

            Each label is spelt as ``/feedback`` takes it; one unknown label refuses the whole batch
            (400, naming its index). A label naming no stored prediction is reported ``not_found`` and
            the others are stored.


    Args:
        body (FeedbackBatchRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Error | list[FeedbackItemReceipt]
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
