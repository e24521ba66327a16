// ffrtmp console: keep <main> current without reloading. Every 2 s (while the tab is visible
// and nothing in it has focus), ask for the same URL with X-Fragment: 1 and swap <main>.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || location.pathname === "/ui/login") return;
  const busy = () => main.contains(document.activeElement) && document.activeElement !== document.body;
  async function refresh() {
    if (document.hidden || busy()) return;
    try {
      const resp = await fetch(location.href, { headers: { "X-Fragment": "1" }, credentials: "same-origin" });
      if (resp.redirected || resp.status === 401) { location.reload(); return; }
      if (resp.ok) main.innerHTML = await resp.text();
    } catch (e) {
      /* the coordinator is restarting: try again on the next tick */
    }
  }
  setInterval(refresh, 2000);
})();
