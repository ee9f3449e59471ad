/* The printable batch report is complete without scripts; this only wires the print button
   (inline handlers are blocked by the pages' CSP). */
(function () {
  "use strict";
  var button = document.getElementById("print-report");
  if (button) button.addEventListener("click", function () { window.print(); });
})();
