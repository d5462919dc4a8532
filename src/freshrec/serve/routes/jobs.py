"""``/v1/jobs``: background work (large item batches being embedded)."""

from typing import Any

from fastapi import APIRouter

from freshrec.serve.http import Access, answers
from freshrec.serve.intake import Problem
from freshrec.serve.service import Service


def router(service: Service, access: Access) -> APIRouter:
    routes = APIRouter(tags=["jobs"])

    @routes.get("/v1/jobs/{job_id}", dependencies=[access.reader], responses=answers(404, 422))
    async def get_job(job_id: str) -> dict[str, Any]:
        job = service.items.jobs.get(job_id)
        if job is None:
            raise Problem(404, f"no job {job_id!r}")
        return job.as_dict()

    return routes
