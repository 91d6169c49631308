// The report's only script, plain DOM, no dependency; each part fails soft when its target is absent.
(function () {
  // draw every chart from its JSON block with the plotly.js inlined in the head
  var shared = document.getElementById('fig-template');
  var template = shared ? JSON.parse(shared.textContent) : null;
  if (window.Plotly) {
    document.querySelectorAll('script.figure[type="application/json"]').forEach(function (node) {
      var div = document.getElementById(node.getAttribute('data-chart'));
      if (!div) return;
      var figure = JSON.parse(node.textContent);
      if (template && !figure.layout.template) figure.layout.template = template;
      Plotly.newPlot(div, figure.data, figure.layout, figure.config);
    });
  }
  // filter the session index as the user types
  var input = document.getElementById('session-filter');
  var table = document.getElementById('session-index');
  if (!input || !table) return;
  input.addEventListener('input', function () {
    var q = input.value.toLowerCase();
    table.querySelectorAll('tbody tr').forEach(function (tr) {
      tr.style.display = tr.textContent.toLowerCase().indexOf(q) === -1 ? 'none' : '';
    });
  });
})();
