from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.problem_doc import ProblemDoc
from ...types import Response


def _get_kwargs(
    project: str,
    model: str,
    version: str,
    file: str,
    *,
    body: list[int],
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "put",
        "url": "/uploads/{project}/{model}/{version}/{file}".format(
            project=quote(str(project), safe=""),
            model=quote(str(model), safe=""),
            version=quote(str(version), safe=""),
            file=quote(str(file), safe=""),
        ),
    }

    _kwargs["content"] = body.payload

    headers["Content-Type"] = "application/octet-stream"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(*, client: AuthenticatedClient | Client, response: httpx.Response) -> Any | ProblemDoc | None:
    if response.status_code == 201:
        response_201 = response.json()
        return response_201

    if response.status_code == 400:
        response_400 = ProblemDoc.from_dict(response.json())

        return response_400

    if response.status_code == 403:
        response_403 = ProblemDoc.from_dict(response.json())

        return response_403

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(*, client: AuthenticatedClient | Client, response: httpx.Response) -> Response[Any | ProblemDoc]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    project: str,
    model: str,
    version: str,
    file: str,
    *,
    client: AuthenticatedClient | Client,
    body: list[int],
) -> Response[Any | ProblemDoc]:
    """Streams the request body to a temporary file (models can be gigabytes), then stores it.

    Args:
        project (str):
        model (str):
        version (str):
        file (str):
        body (list[int]):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Any | ProblemDoc]
    """

    kwargs = _get_kwargs(
        project=project,
        model=model,
        version=version,
        file=file,
        body=body,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    project: str,
    model: str,
    version: str,
    file: str,
    *,
    client: AuthenticatedClient | Client,
    body: list[int],
) -> Any | ProblemDoc | None:
    """Streams the request body to a temporary file (models can be gigabytes), then stores it.

    Args:
        project (str):
        model (str):
        version (str):
        file (str):
        body (list[int]):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Any | ProblemDoc
    """

    return sync_detailed(
        project=project,
        model=model,
        version=version,
        file=file,
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    project: str,
    model: str,
    version: str,
    file: str,
    *,
    client: AuthenticatedClient | Client,
    body: list[int],
) -> Response[Any | ProblemDoc]:
    """Streams the request body to a temporary file (models can be gigabytes), then stores it.

    Args:
        project (str):
        model (str):
        version (str):
        file (str):
        body (list[int]):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Any | ProblemDoc]
    """

    kwargs = _get_kwargs(
        project=project,
        model=model,
        version=version,
        file=file,
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    project: str,
    model: str,
    version: str,
    file: str,
    *,
    client: AuthenticatedClient | Client,
    body: list[int],
) -> Any | ProblemDoc | None:
    """Streams the request body to a temporary file (models can be gigabytes), then stores it.

    Args:
        project (str):
        model (str):
        version (str):
        file (str):
        body (list[int]):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Any | ProblemDoc
    """

    return (
        await asyncio_detailed(
            project=project,
            model=model,
            version=version,
            file=file,
            client=client,
            body=body,
        )
    ).parsed
