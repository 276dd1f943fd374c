"""``/quote/<symbol>``: a quote from the slow price service, computed once per key across every
worker (``cache.get_or_set`` is mtcache's ``get_or_compute``); ``/cached/<symbol>``: the same
through Django's ``cache_page`` (get, then set: each worker that misses computes)."""

import os

from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.cache import cache_page

from workers.quotes import fetch_quote


def quote(request: HttpRequest, symbol: str) -> JsonResponse:
    """The quote of ``symbol``, cached 60 s."""
    symbol = symbol.upper()
    value = cache.get_or_set(f"quote:{symbol}", lambda: fetch_quote(symbol), 60)
    return JsonResponse({"symbol": symbol, "value": value, "pid": os.getpid()})


@cache_page(60)
def cached_page(request: HttpRequest, symbol: str) -> JsonResponse:
    """The same, the whole response cached by Django's cache_page."""
    symbol = symbol.upper()
    return JsonResponse({"symbol": symbol, "value": fetch_quote(symbol), "pid": os.getpid()})


def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    return JsonResponse({"error": f"no such resource: {request.path}"}, status=404)


urlpatterns = [
    path("quote/<slug:symbol>", quote),
    path("cached/<slug:symbol>", cached_page),
    path("<path:rest>", not_found),
]
