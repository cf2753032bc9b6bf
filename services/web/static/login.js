// The login form's one behaviour: say so when the last token was wrong (/login?error=1).
"use strict";
if (new URLSearchParams(location.search).get("error")) {
  document.getElementById("login-error").hidden = false;
}
