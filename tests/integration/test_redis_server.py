"""The Redis services are the server .services.env names (REDIS_SERVER, from
`scripts/services up --redis redis|valkey` or `switch-redis`): scripts/test's
Valkey stage runs the Redis-facing tests against both servers, and would test
Redis twice without a word if the switch left Redis running."""
from __future__ import annotations

import redis

from tls_helpers import secure_services


def test_both_redis_services_run_the_server_the_services_name(services):
    want = services.get("REDIS_SERVER", "redis")
    plain = redis.Redis(host=services["REDIS_HOST"], port=int(services["REDIS_PORT"]),
                        decode_responses=True, socket_timeout=5)
    tls = secure_services(services).redis()
    for name, client in (("plain", plain), ("TLS", tls)):
        info = client.info("server")
        # Valkey answers INFO as Redis 7.2.4 plus server_name/valkey_version
        if want == "valkey":
            assert info.get("server_name") == "valkey", f"{name}: {info}"
            assert str(info["valkey_version"]).startswith("8.1."), f"{name}: {info}"
        else:
            assert "valkey_version" not in info, f"{name} is Valkey, REDIS_SERVER says {want}"
            assert str(info["redis_version"]).startswith("7."), f"{name}: {info}"
