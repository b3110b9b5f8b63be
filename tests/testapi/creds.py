"""Fixed test credentials accepted by the local test API (see README.md)."""

BEARER_TOKEN = "t0k3n-secret-XYZ"  # /auth/bearer: Authorization: Bearer <token>
API_KEY_HEADER = "X-Api-Key"
API_KEY = "k3y-secret-ABC"  # /auth/header: X-Api-Key: <key>
QUERY_PARAM = "api_key"
QUERY_KEY = "q-secret-123"  # /auth/query: ?api_key=<key>
BASIC_USER = "user"  # /auth/basic
BASIC_PASSWORD = "pa55-word"
OAUTH_CLIENT_ID = "client-1"  # POST /oauth/token (client credentials)
OAUTH_CLIENT_SECRET = "s3cret-client"
