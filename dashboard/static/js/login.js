/* The login form: POST /api/auth/login (JSON), keep the CSRF token it returns for later
   changes (sent as X-CSRF-Token), make the user's saved language this browser's, then go
   where the user was going. Without scripts the form posts itself and the gateway redirects. */
(function () {
  "use strict";
  var C = window.Cacao;
  var form = document.getElementById("login-form");
  var error = document.getElementById("login-error");

  function fail(text) {
    error.textContent = text;
    error.hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    error.hidden = true;
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    C.api("/api/auth/login", {
      method: "POST", allowAnonymous: true,
      body: { username: form.username.value, password: form.password.value }
    }).then(function (answer) {
      if (answer && answer.csrf_token) sessionStorage.setItem(C.CSRF_KEY, answer.csrf_token);
      if (answer && answer.language) C.rememberLanguage(answer.language);
      location.assign(form.getAttribute("data-next") || "/");
    }, function (problem) {
      button.disabled = false;
      if (problem.status === 404 || problem.status === 405) fail(C.t("login.unavailable"));
      else if (problem.status === 401) fail(C.t("login.error_wrong"));
      else if (problem.status === 429) fail(C.t("login.error_locked") + " (" + problem.message + ")");
      else fail(C.t("login.failed", { detail: problem.message }));
    });
  });
})();
