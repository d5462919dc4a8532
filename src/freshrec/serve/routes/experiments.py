"""``/v1/experiments``: the running A/B experiment, its figures per arm, and its control."""

from typing import Any

from fastapi import APIRouter

from freshrec.serve.experiments import Experiment, ExperimentError
from freshrec.serve.http import Access, answers
from freshrec.serve.intake import Problem
from freshrec.serve.schemas import Conclusion, ExperimentOut, Experiments
from freshrec.serve.service import Service


def router(service: Service, access: Access) -> APIRouter:
    routes = APIRouter(tags=["experiments"])

    def named(name: str) -> Experiment:
        experiment = service.experiment
        if experiment is None or experiment.config.name != name:
            raise Problem(404, f"no experiment {name!r} is configured ([experiment] in the settings)")
        return experiment

    @routes.get("/v1/experiments", response_model=Experiments, dependencies=[access.reader])
    async def experiments() -> dict[str, Any]:
        """The configured experiment (none, or one) with its figures per arm: lists
        served, click-through and online hit rate with 95% Wilson intervals, and each
        arm's difference from the control with its 95% interval."""
        experiment = service.experiment
        return {"experiments": [experiment.summary()] if experiment is not None else []}

    @routes.get(
        "/v1/experiments/{name}",
        response_model=ExperimentOut,
        dependencies=[access.reader],
        responses=answers(404, 422),
    )
    async def experiment(name: str) -> dict[str, Any]:
        """One experiment's figures (see ``GET /v1/experiments``)."""
        return named(name).summary()

    def change(name: str, status: str, winner: str | None = None) -> dict[str, Any]:
        experiment = named(name)
        try:
            experiment.change(status, winner)
        except ExperimentError as exc:
            raise Problem(422, str(exc)) from None
        return experiment.summary()

    @routes.post(
        "/v1/experiments/{name}/start",
        response_model=ExperimentOut,
        dependencies=[access.admin],
        responses=answers(404, 422),
    )
    def start(name: str) -> dict[str, Any]:
        """Serve each user the model of their arm (again); the counts go on from where they were."""
        return change(name, "running")

    @routes.post(
        "/v1/experiments/{name}/stop",
        response_model=ExperimentOut,
        dependencies=[access.admin],
        responses=answers(404, 422),
    )
    def stop(name: str) -> dict[str, Any]:
        """Serve every user the default model; the arms keep learning, their counts stay."""
        return change(name, "stopped")

    @routes.post(
        "/v1/experiments/{name}/conclude",
        response_model=ExperimentOut,
        dependencies=[access.admin],
        responses=answers(400, 404, 422),
    )
    def conclude(name: str, body: Conclusion) -> dict[str, Any]:
        """Serve every user the winner's model from now on (it stays so across restarts;
        make the winner's settings the defaults and remove ``[experiment]`` to stop
        learning the others)."""
        return change(name, "concluded", body.winner)

    return routes
