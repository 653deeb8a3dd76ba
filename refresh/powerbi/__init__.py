"""Power BI layer: a small REST client, its error tree and models, a loopback simulator and a
swagger validator for tests.

Import the client and errors from here; the simulator and the validator are test tools and are
imported from their own modules (``refresh.dev.powerbi_sim.simulator``, ``refresh.dev.swagger``).
"""

from refresh.powerbi.client import DEFAULT_ENHANCED_TYPE, PowerBIClient, build_refresh_body, odata_string
from refresh.powerbi.errors import (
    AuthenticationError,
    BadRequestError,
    DailyLimitError,
    NameResolutionError,
    NotFoundError,
    NotRefreshableError,
    PowerBIError,
    RefreshBusyError,
    ServerError,
    ThrottledError,
    TransportError,
)
from refresh.powerbi.models import (
    Dataset,
    RefreshState,
    RefreshStatus,
    Workspace,
    dataset_from_api,
    refresh_from_details,
    refresh_from_history_entry,
    workspace_from_api,
)

__all__ = [
    "DEFAULT_ENHANCED_TYPE",
    "AuthenticationError",
    "BadRequestError",
    "DailyLimitError",
    "Dataset",
    "NameResolutionError",
    "NotFoundError",
    "NotRefreshableError",
    "PowerBIClient",
    "PowerBIError",
    "RefreshBusyError",
    "RefreshState",
    "RefreshStatus",
    "ServerError",
    "ThrottledError",
    "TransportError",
    "Workspace",
    "build_refresh_body",
    "dataset_from_api",
    "odata_string",
    "refresh_from_details",
    "refresh_from_history_entry",
    "workspace_from_api",
]
