"""Shared by the worker test files: a World whose Power BI simulator tells the app's (fake) time."""

from __future__ import annotations

from datetime import timedelta

from test_worker import CONFIG, World

from refresh.dev.powerbi_sim.extras import align_wall

__all__ = ["CONFIG", "World", "advance", "aligned_world", "our_posts", "refresh_ids"]


def aligned_world(azurite, sim, registered, unique, **settings) -> World:
    w = World(azurite, sim, registered, unique, **settings)
    align_wall(sim, w.clock.now())
    return w


def advance(world: World, seconds: float) -> None:
    """Move the app's and the simulator's clocks together (outside the pump)."""
    world.clock.advance(seconds)
    world.sim.advance(seconds)


def our_posts(world: World, dataset_id: str) -> list:
    return [p for p in world.posts(dataset_id)]


def refresh_ids(world: World, dataset_id: str) -> list[str]:
    """Ids of the refreshes the app's POSTs started (202 answers), oldest first."""
    return [p.response_headers["RequestId"] for p in world.posts(dataset_id) if p.status == 202]


def until(world: World, seconds: float):
    return world.clock.now() + timedelta(seconds=seconds)
