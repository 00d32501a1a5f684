"""The offline stand-ins, part of the product: an offline Discord (:mod:`services.offline.discord`, REST and gateway
on 127.0.0.1, enforcing Discord's rules) and a Fun-Music simulator (:mod:`services.offline.simulator`, DashScope's
wire format with real audio). ``SONGBOT_SIMULATE``, ``python bot.py demo`` (:mod:`services.offline.demo`) and the
tests run the real bot against them. How faithful each one is, and where not: docs/offline.md."""
