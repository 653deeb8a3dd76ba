"""Token failures are transient (issue 9 item 7): the real ManagedIdentityCredential against a token
endpoint that is down gives a retryable error that says the request was never sent."""

from __future__ import annotations

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from refresh.dev.powerbi_sim.extras import bring_identity_up, take_identity_down
from refresh.powerbi.client import PowerBIClient
from refresh.powerbi.errors import AuthenticationError, PowerBIError, TokenError

SCOPE = "https://analysis.windows.net/powerbi/api/.default"


@pytest.mark.parametrize("kind", [DefaultAzureCredential, ManagedIdentityCredential])
def test_token_endpoint_down_is_retryable_and_names_the_credential_error(sim, credential, dedicated, kind):
    workspace, dataset = dedicated
    with kind(retry_total=0) as cred, PowerBIClient(sim.base_url, SCOPE, cred, timeout=5) as client:
        take_identity_down(sim)
        with pytest.raises(PowerBIError) as caught:
            client.get_refresh_history(workspace, dataset)
        assert caught.value.is_retryable and caught.value.before_request
        assert "token" in str(caught.value) and ("Connection aborted" in str(caught.value)
                                                  or "RemoteDisconnected" in str(caught.value))
        assert sim.requests == []  # nothing reached Power BI
        bring_identity_up(sim)
        assert client.get_refresh_history(workspace, dataset) == []


def test_a_credential_refusal_is_a_token_error_that_is_still_an_authentication_error():
    class Refusing:
        def get_token(self, *scopes, **kwargs):
            from azure.core.exceptions import ClientAuthenticationError

            raise ClientAuthenticationError("App Service managed identity configuration not found in environment.")

    client = PowerBIClient("https://api.powerbi.com/v1.0/myorg", SCOPE, Refusing())
    with pytest.raises(TokenError) as caught:
        client.get_workspace("Gold")
    assert isinstance(caught.value, AuthenticationError) and caught.value.is_retryable
    assert "Refusing: App Service managed identity configuration not found" in str(caught.value)
