// hookrelay console: small conveniences on top of pages that work without
// script. Times in the browser's time zone; the endpoint form shows only
// the fields its choices need and previews the body as it is typed.
"use strict";

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) {
      el.textContent = at.toLocaleString();
      el.title = el.getAttribute("datetime");
    }
  }
}

function endpointForm(form) {
  const preview = document.getElementById("preview");
  const route = form.querySelector("#route");
  const toggles = () => {
    const format = (form.querySelector("input[name=format]:checked") || {}).value || "json";
    const auth = form.querySelector("#basic_auth");
    for (const el of form.querySelectorAll("[data-when]")) {
      const when = el.getAttribute("data-when");
      el.hidden = when === "basic_auth" ? !(auth && auth.checked) : when !== format;
    }
    const r = route ? route.value : "";
    for (const g of form.querySelectorAll("fieldset.group[data-route]")) {
      g.hidden = r !== "" && g.getAttribute("data-route") !== r;
    }
  };
  let timer = null;
  let asked = 0;
  const refresh = () => {
    const body = new URLSearchParams(new FormData(form));
    const mine = ++asked;
    fetch("/ui/preview", { method: "POST", body, credentials: "same-origin" })
      .then((r) => r.text())
      .then((text) => { if (mine === asked && preview) preview.textContent = text; })
      .catch(() => {});
  };
  form.addEventListener("input", () => {
    toggles();
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  });
  form.addEventListener("change", toggles);
  toggles();
  if (preview && preview.textContent.trim() === "") refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const form = document.getElementById("endpoint-form");
  if (form) endpointForm(form);
});
