"""Dependencies shared by the routes: the service (access control is ``access.guard``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from digitrec.api.access import Caller, guard
from digitrec.api.service import Service


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
CallerDep = Annotated[Caller, Depends(guard)]  # resolved once per request with the router's
