/*
 * Orthanc AI in Orthanc Explorer (1.10: jQuery 1.x + jQuery Mobile), loaded by
 * orthanc.ExtendOrthancExplorer(). The glue puts the stylesheet before this file
 * as the string ORTHANC_AI_CSS.
 *
 * Everything shown comes from the plugin's REST API (/ai/...), i.e. from the
 * tags stored in the instances. Tag values, model names and file names are
 * untrusted text: the DOM is built with createElement/textContent only, never
 * with innerHTML or jQuery's $('<tag>' + data).
 */
(function () {
  'use strict';

  var API = '../ai';
  var DISCLAIMER = 'Decision support only, not a diagnosis: the results of research models, ' +
    'to be read by a qualified professional.';
  var POLL_MS = 1000;
  var NOUN = { instance: 'image', series: 'series', studies: 'study' };
  // Series without images to predict, as series_reports.why_not_images: these modalities, and the plugin's own
  // heatmap Secondary Captures (Manufacturer orthanc-ai).
  var NOT_IMAGES = ['SR', 'KO', 'PR', 'SEG', 'RTSTRUCT', 'DOC'];
  var PLUGIN_MANUFACTURER = 'orthanc-ai';

  function holdsImages(series) {
    var tags = series.MainDicomTags || {};
    return NOT_IMAGES.indexOf(tags.Modality) < 0 && $.trim(tags.Manufacturer || '') !== PLUGIN_MANUFACTURER;
  }
  var POLL_LIMIT_MS = 120000;

  // Which resource each of our panels currently shows (stale answers are dropped).
  var shown = { instance: null, series: null, studies: null };

  // --- small DOM helpers ------------------------------------------------------
  function el(tag, attributes, children) {
    var node = document.createElement(tag);
    var key;
    for (key in (attributes || {})) {
      if (!attributes.hasOwnProperty(key) || attributes[key] === null || attributes[key] === undefined) {
        continue;
      }
      if (key === 'text') {
        node.textContent = String(attributes[key]);
      } else if (key === 'className') {
        node.className = attributes[key];
      } else if (key === 'onclick') {
        node.addEventListener('click', attributes[key]);
      } else {
        node.setAttribute(key, String(attributes[key]));
      }
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) {
        return;
      }
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
    return node;
  }

  function percent(p) {
    return (Math.round(Number(p) * 1000) / 10).toFixed(1) + ' %';
  }

  function shortDate(iso) {
    if (!iso) {
      return '';
    }
    var d = new Date(iso);
    if (isNaN(d.getTime())) {
      return String(iso);
    }
    return d.toLocaleString();
  }

  function errorText(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.error) {
        return String(body.error);
      }
      if (body && body.Message) {
        return String(body.Message) + (body.Details ? ': ' + String(body.Details) : '');
      }
    } catch (e) { /* not JSON */ }
    return 'HTTP ' + xhr.status + ' ' + (xhr.statusText || '');
  }

  function request(method, path, body) {
    return $.ajax({
      url: API + path,
      type: method,
      dataType: 'json',
      contentType: 'application/json',
      data: body === undefined ? undefined : JSON.stringify(body),
      cache: false
    });
  }

  function stylesheet() {
    if (document.getElementById('ai-style')) {
      return;
    }
    var style = el('style', { id: 'ai-style' });
    style.textContent = typeof ORTHANC_AI_CSS === 'string' ? ORTHANC_AI_CSS : '';
    document.head.appendChild(style);
  }

  // --- results of one instance -------------------------------------------------
  function resultCard(prediction) {
    var classes = Object.keys(prediction.classes || {}).map(function (name) {
      return { name: name, p: Number(prediction.classes[name]) };
    });
    classes.sort(function (a, b) { return b.p - a.p; });
    var rows = classes.map(function (c) {
      var top = c.name === prediction.topClass;
      return el('div', { className: 'ai-class' + (top ? ' ai-top' : ''), 'data-class': c.name,
                         'data-probability': c.p }, [
        el('span', { className: 'ai-class-name', text: c.name }),
        el('span', { className: 'ai-bar' }, [
          el('span', { className: 'ai-bar-fill', style: 'width:' + Math.max(0, Math.min(100, c.p * 100)).toFixed(1) + '%' })
        ]),
        el('span', { className: 'ai-class-p', text: percent(c.p) })
      ]);
    });
    var details = ['version ' + prediction.version];
    if (prediction.dataset) {
      details.push('trained on ' + prediction.dataset);
    }
    details.push(shortDate(prediction.dateTime));
    if (prediction.frame && prediction.frame > 1) {
      details.push('frame ' + prediction.frame);
    }
    if (prediction.sourceFileName) {
      details.push('file ' + prediction.sourceFileName);
    }
    return el('div', { className: 'ai-card', 'data-model': prediction.model }, [
      el('div', { className: 'ai-card-head' }, [
        el('span', { className: 'ai-model', text: prediction.model }),
        el('span', { className: 'ai-verdict' }, [
          el('span', { text: prediction.topClass }),
          ' ',
          el('span', { className: 'ai-verdict-p', text: percent(prediction.topProbability) })
        ])
      ]),
      el('div', { className: 'ai-classes' }, rows),
      el('div', { className: 'ai-meta', text: details.join(' · ') }),
      prediction.heatmap
        ? el('button', { type: 'button', className: 'ai-button ai-small ai-show-heatmap', 'data-model': prediction.model,
                         onclick: function () { chooseHeatmapModel(prediction.model, true); } }, ['Show heatmap'])
        : el('div', { className: 'ai-no-heatmap', text: 'No heatmap for this model.' })
    ]);
  }

  function statusLine(status, predictions) {
    if (!status) {
      return predictions.length ? null : 'Not predicted yet.';
    }
    if (status.state === 'skipped' || status.state === 'failed') {
      return 'Last run ' + status.state + ': ' + (status.reason || '') + (status.at ? ' (' + shortDate(status.at) + ')' : '');
    }
    return null;
  }

  function instancePanel() {
    var host = $('#instance .ui-block-b > div').first();
    var panel = document.getElementById('ai-instance');
    if (!panel) {
      panel = el('div', { id: 'ai-instance', className: 'ai-panel' });
      host.prepend(panel);
    }
    return panel;
  }

  function renderInstance(uuid, answer, message) {
    if (shown.instance !== uuid) {
      return;
    }
    var panel = clear(instancePanel());
    var predictions = answer ? answer.predictions || [] : [];
    predictions.sort(function (a, b) { return a.model < b.model ? -1 : (a.model > b.model ? 1 : 0); });
    panel.appendChild(el('div', { className: 'ai-panel-head' }, [
      el('h2', { text: 'AI results' }),
      el('button', { type: 'button', id: 'ai-predict', className: 'ai-button',
                     onclick: function () { openChooser('instance', uuid); } }, ['Predict…'])
    ]));
    var line = message || statusLine(answer && answer.status, predictions);
    if (line) {
      panel.appendChild(el('p', { className: 'ai-status', id: 'ai-instance-status', text: line }));
    }
    if (predictions.length) {
      panel.appendChild(el('div', { className: 'ai-cards', id: 'ai-results' }, predictions.map(resultCard)));
      var mapped = predictions.filter(function (p) { return !!p.heatmap; });
      if (mapped.length) {
        panel.appendChild(heatmapSection(uuid, mapped));
      }
      panel.appendChild(el('p', { className: 'ai-disclaimer', text: DISCLAIMER }));
    }
  }

  // --- heatmap over the analysed frame (GET /ai/instances/{id}/heatmap) ------------
  var DEFAULT_OPACITY = 0.4;  // heatmap_rendering.DEFAULT_OPACITY
  var MAX_STAGE_PX = 512;
  // What the viewer shows, kept across re-renderings of the panel: { uuid, model, cls, opacity, visible }.
  var heatmapChoice = { uuid: null };
  var heatmapRequest = 0;

  function jetColour(x) {
    // heatmap_rendering.jet(): red, green, blue peak at 3/4, 1/2, 1/4 of the scale.
    function channel(centre) {
      return Math.round(Math.max(0, Math.min(1, 1.5 - Math.abs(4 * x - centre))) * 255);
    }
    return 'rgb(' + channel(3) + ',' + channel(2) + ',' + channel(1) + ')';
  }

  function jetGradient() {
    // jet is piecewise linear with corners at 0, 1/8, 3/8, 5/8, 7/8, 1: these stops reproduce it exactly.
    var stops = [0, 0.125, 0.375, 0.625, 0.875, 1].map(function (x) { return jetColour(x) + ' ' + (x * 100) + '%'; });
    return 'linear-gradient(to right, ' + stops.join(', ') + ')';
  }

  function formatValue(v) {
    var n = Number(v);
    return Math.abs(n) >= 100 ? n.toFixed(0) : n.toPrecision(3);
  }

  // The class goes by its index in the model's classes: a name can hold '&', '=' or '%', which some
  // Orthanc versions (1.13) decode before splitting the query string.
  function heatmapUrl(uuid, model, classIndex, format) {
    return API + '/instances/' + encodeURIComponent(uuid) + '/heatmap?model=' + encodeURIComponent(model) +
      (classIndex === null ? '' : '&classIndex=' + classIndex) + '&format=' + format;
  }

  function heatmapSection(uuid, mapped) {
    if (heatmapChoice.uuid !== uuid) {
      heatmapChoice = { uuid: uuid, model: null, cls: null, opacity: DEFAULT_OPACITY, visible: true };
    }
    var names = mapped.map(function (p) { return p.model; });
    if (names.indexOf(heatmapChoice.model) < 0) {
      heatmapChoice.model = names[0];
      heatmapChoice.cls = null;
    }
    var modelSelect = el('select', { id: 'ai-heatmap-model', 'data-role': 'none' }, names.map(function (name) {
      return el('option', { value: name, text: name });
    }));
    modelSelect.value = heatmapChoice.model;
    modelSelect.addEventListener('change', function () { chooseHeatmapModel(modelSelect.value, false); });
    var classSelect = el('select', { id: 'ai-heatmap-class', 'data-role': 'none' });
    classSelect.addEventListener('change', function () {
      heatmapChoice.cls = Number(classSelect.value);
      loadHeatmap(uuid);
    });
    var toggle = el('input', { type: 'checkbox', id: 'ai-heatmap-toggle', 'data-role': 'none' });
    toggle.checked = heatmapChoice.visible;
    toggle.addEventListener('change', function () {
      heatmapChoice.visible = toggle.checked;
      applyOverlayStyle();
    });
    var slider = el('input', { type: 'range', id: 'ai-heatmap-opacity', min: 0, max: 100, step: 5,
                               value: Math.round(heatmapChoice.opacity * 100), 'data-role': 'none',
                               'aria-label': 'Heatmap opacity' });
    var sliderValue = el('span', { id: 'ai-heatmap-opacity-value', className: 'ai-heatmap-number',
                                   text: Math.round(heatmapChoice.opacity * 100) + ' %' });
    slider.addEventListener('input', function () {
      heatmapChoice.opacity = Number(slider.value) / 100;
      sliderValue.textContent = slider.value + ' %';
      applyOverlayStyle();
    });
    slider.addEventListener('change', function () {
      heatmapChoice.opacity = Number(slider.value) / 100;
      sliderValue.textContent = slider.value + ' %';
      applyOverlayStyle();
    });
    var legend = el('div', { className: 'ai-heatmap-legend', id: 'ai-heatmap-legend' }, [
      el('div', { className: 'ai-heatmap-scale', style: 'background:' + jetGradient() }),
      el('div', { className: 'ai-heatmap-scale-labels' }, [
        el('span', {}, ['low ', el('span', { id: 'ai-heatmap-min', className: 'ai-heatmap-number' })]),
        el('span', {}, ['high ', el('span', { id: 'ai-heatmap-max', className: 'ai-heatmap-number' })])
      ])
    ]);
    var stage = el('div', { className: 'ai-heatmap-stage', id: 'ai-heatmap-stage' }, [
      el('img', { id: 'ai-heatmap-image', className: 'ai-heatmap-base', alt: 'Analysed frame' }),
      el('img', { id: 'ai-heatmap-overlay', className: 'ai-heatmap-overlay', alt: 'Heatmap' })
    ]);
    return el('div', { className: 'ai-heatmap', id: 'ai-heatmap' }, [
      el('h3', { text: 'Heatmap: where the model looked' }),
      el('div', { className: 'ai-heatmap-body' }, [
        stage,
        el('div', { className: 'ai-heatmap-controls' }, [
          el('label', { className: 'ai-field', 'for': 'ai-heatmap-model' }, [el('span', { text: 'Model' }), modelSelect]),
          el('label', { className: 'ai-field', 'for': 'ai-heatmap-class' }, [el('span', { text: 'Class' }), classSelect]),
          el('label', { className: 'ai-heatmap-inline', 'for': 'ai-heatmap-toggle' }, [toggle, ' Show the heatmap']),
          el('label', { className: 'ai-field', 'for': 'ai-heatmap-opacity' }, [
            el('span', {}, ['Opacity ', sliderValue]), slider]),
          legend,
          el('p', { className: 'ai-meta', id: 'ai-heatmap-info' }),
          el('p', { className: 'ai-status', id: 'ai-heatmap-status', text: 'Loading the heatmap…' })
        ])
      ])
    ]);
  }

  function chooseHeatmapModel(model, scroll) {
    var select = document.getElementById('ai-heatmap-model');
    if (!select || !heatmapChoice.uuid) {
      return;
    }
    select.value = model;
    if (select.value !== model) {
      return;  // not a model with a heatmap of this instance
    }
    if (heatmapChoice.model !== model) {
      heatmapChoice.model = model;
      heatmapChoice.cls = null;
      loadHeatmap(heatmapChoice.uuid);
    }
    if (scroll) {
      document.getElementById('ai-heatmap').scrollIntoView();
    }
  }

  function applyOverlayStyle() {
    var overlay = document.getElementById('ai-heatmap-overlay');
    if (overlay) {
      overlay.style.opacity = String(heatmapChoice.opacity);
      overlay.style.display = heatmapChoice.visible ? '' : 'none';
    }
  }

  function loadHeatmap(uuid) {
    var status = document.getElementById('ai-heatmap-status');
    if (!status || shown.instance !== uuid) {
      return;
    }
    var number = ++heatmapRequest;
    var model = heatmapChoice.model, cls = heatmapChoice.cls;
    var stage = document.getElementById('ai-heatmap-stage');
    stage.removeAttribute('data-ready');
    var chosen = document.getElementById('ai-heatmap-class');
    status.textContent = cls === null ? 'Loading the heatmap…'
      : 'Loading the heatmap of class ' + chosen.options[chosen.selectedIndex].text + '…';
    $.ajax({ url: heatmapUrl(uuid, model, cls, 'json'), dataType: 'json', cache: false }).done(function (answer) {
      if (number !== heatmapRequest || shown.instance !== uuid) {
        return;
      }
      showHeatmap(uuid, answer);
    }).fail(function (xhr) {
      if (number === heatmapRequest) {
        status.textContent = 'Cannot show the heatmap: ' + errorText(xhr);
      }
    });
  }

  function showHeatmap(uuid, answer) {
    var classSelect = document.getElementById('ai-heatmap-class');
    clear(classSelect);
    var classes = answer.classes || [];
    classes.forEach(function (name, index) {
      classSelect.appendChild(el('option', { value: String(index), text: name }));
    });
    heatmapChoice.cls = classes.indexOf(answer['class']);
    classSelect.value = String(heatmapChoice.cls);
    document.getElementById('ai-heatmap-min').textContent = formatValue(answer.min);
    document.getElementById('ai-heatmap-max').textContent = formatValue(answer.max);
    var info = 'Class ' + answer['class'] + (answer.probability !== null && answer.probability !== undefined
      ? ' (' + percent(answer.probability) + ')' : '') + ' · ' +
      (answer.source === 'tags' ? 'stored with the result' : 'computed now') + ' · frame ' + answer.frame +
      ' · ' + answer.rows + ' × ' + answer.columns + ' grid, logit units';
    document.getElementById('ai-heatmap-info').textContent = info;

    var stage = document.getElementById('ai-heatmap-stage');
    var base = document.getElementById('ai-heatmap-image');
    var overlay = document.getElementById('ai-heatmap-overlay');
    var status = document.getElementById('ai-heatmap-status');
    // Displayed at least 320 and at most 512 pixels wide, the overlay stretched over it exactly.
    var width = Math.max(320, Math.min(MAX_STAGE_PX, answer.frameColumns));
    stage.style.width = width + 'px';
    stage.style.height = Math.round(width * answer.frameRows / answer.frameColumns) + 'px';
    var pending = 2;
    function loaded() {
      pending -= 1;
      if (pending === 0) {
        stage.setAttribute('data-ready', 'true');
        status.textContent = '';
      }
    }
    base.onload = loaded;
    overlay.onload = loaded;
    base.onerror = function () { status.textContent = 'Orthanc cannot render this frame.'; };
    overlay.onerror = function () { status.textContent = 'Cannot load the heatmap image.'; };
    overlay.setAttribute('data-class', answer['class']);
    overlay.setAttribute('data-model', answer.model);
    applyOverlayStyle();
    var frameUrl = '../instances/' + encodeURIComponent(uuid) + '/frames/' + (answer.frame - 1) + '/preview';
    if (base.getAttribute('src') === frameUrl && base.complete) {
      loaded();
    } else {
      base.setAttribute('src', frameUrl);
    }
    var overlayUrl = heatmapUrl(uuid, answer.model, heatmapChoice.cls, 'png');
    if (overlay.getAttribute('src') === overlayUrl && overlay.complete) {
      loaded();
    } else {
      overlay.setAttribute('src', overlayUrl);
    }
    if (heatmapChoice.scroll) {
      heatmapChoice.scroll = false;
      document.getElementById('ai-heatmap').scrollIntoView();
    }
  }

  function loadInstance(uuid, waitForPrediction) {
    var started = Date.now();
    function poll() {
      if (shown.instance !== uuid) {
        return;
      }
      request('GET', '/instances/' + uuid + '/predictions').done(function (answer) {
        var pending = waitForPrediction && !answer.status && !(answer.predictions || []).length;
        if (pending && Date.now() - started < POLL_LIMIT_MS) {
          renderInstance(uuid, answer, 'Predicting… (' + Math.round((Date.now() - started) / 1000) + ' s)');
          window.setTimeout(poll, POLL_MS);
          return;
        }
        renderInstance(uuid, answer);
        loadHeatmap(uuid);
        if (waitForPrediction && !pending) {
          refreshOrthancInstance();
        }
      }).fail(function (xhr) {
        renderInstance(uuid, null, 'Cannot read the AI results: ' + errorText(xhr));
      });
    }
    poll();
  }

  function refreshOrthancInstance() {
    // Orthanc Explorer's own refresh, so its DICOM tag tree shows the new private tags.
    if (typeof RefreshInstance === 'function') {
      RefreshInstance();
    }
  }

  // --- summary of a series or study --------------------------------------------
  function childPanel(level) {
    var id = 'ai-' + level;
    var panel = document.getElementById(id);
    if (!panel) {
      panel = el('div', { id: id, className: 'ai-panel' });
      $(level === 'series' ? '#series .ui-block-b > div' : '#study .ui-block-b > div').first().prepend(panel);
    }
    return panel;
  }

  // --- one answer per series (GET /ai/series/{id}/summary) ------------------------
  function instanceLink(image, text) {
    var label = text || (image.instanceNumber !== null ? 'image #' + image.instanceNumber : image.instance.substring(0, 8));
    return el('a', { href: '#instance?uuid=' + encodeURIComponent(image.instance), className: 'ai-key-image', text: label });
  }

  function modelAnswer(summary) {
    var rows = (summary.classes || []).map(function (c) {
      return el('li', { 'data-class': c['class'] }, [
        el('strong', { text: c['class'] }), ': top class in ' + c.imagesWithTopClass + ' of ' + summary.images +
        ' image(s), highest ' + percent(c.highestProbability) + ' on ', instanceLink(c.highestAt)
      ]);
    });
    var report = summary.report ?
      el('p', { className: 'ai-report' }, ['DICOM Structured Report: ',
        el('a', { href: '#instance?uuid=' + encodeURIComponent(summary.report), className: 'ai-report-link',
                  text: 'AI ' + summary.model + ' ' + summary.version })]) :
      el('p', { className: 'ai-report ai-status', text: 'Structured Report not written yet.' });
    return el('div', { className: 'ai-answer', 'data-model': summary.model }, [
      el('div', { className: 'ai-answer-head' }, [
        el('span', { className: 'ai-model', text: summary.model }), ' ',
        el('span', { className: 'ai-conclusion' + (summary.conclusion.suspected ? ' ai-suspected' : ''),
                     text: summary.conclusion.text })
      ]),
      el('ul', { className: 'ai-answer-classes' }, rows),
      report
    ]);
  }

  function seriesAnswers(summaryAnswer) {
    var models = summaryAnswer.models || [];
    if (!models.length) {
      return null;
    }
    return el('div', { className: 'ai-answers', id: 'ai-series-answers' }, models.map(modelAnswer));
  }

  function studyAnswers(lines) {
    if (!lines.length) {
      return null;
    }
    return el('ul', { className: 'ai-answers ai-study-answers', id: 'ai-study-answers' }, lines.map(function (line) {
      return el('li', { 'data-series': line.series, 'data-model': line.model }, [
        el('a', { href: '#series?uuid=' + encodeURIComponent(line.series), text: line.title }), ' · ',
        el('span', { className: 'ai-model', text: line.model }), ': ',
        el('span', { className: 'ai-conclusion' + (line.suspected ? ' ai-suspected' : ''), text: line.text })
      ]);
    }));
  }

  function loadStudyAnswers(uuid) {
    // One line per analysed series and model: the series of the study, then each one's summary.
    var deferred = $.Deferred();
    $.ajax({ url: '../studies/' + uuid + '/series', dataType: 'json', cache: false }).done(function (series) {
      var analysed = series.filter(holdsImages);
      var calls = analysed.map(function (s) { return request('GET', '/series/' + s.ID + '/summary'); });
      if (!calls.length) {
        deferred.resolve([]);
        return;
      }
      $.when.apply($, calls).done(function () {
        var answers = calls.length > 1 ? Array.prototype.slice.call(arguments).map(function (a) { return a[0]; })
                                       : [arguments[0]];
        var lines = [];
        answers.forEach(function (answer, index) {
          var tags = analysed[index].MainDicomTags || {};
          var title = 'Series ' + (tags.SeriesNumber || '?') + (tags.SeriesDescription ? ' ' + tags.SeriesDescription : '');
          (answer.models || []).forEach(function (m) {
            lines.push({ series: answer.series, title: title, model: m.model, text: m.conclusion.text,
                         suspected: m.conclusion.suspected });
          });
        });
        deferred.resolve(lines);
      }).fail(function (xhr) { deferred.reject(xhr); });
    }).fail(function (xhr) { deferred.reject(xhr); });
    return deferred.promise();
  }

  function renderSummary(level, uuid, answer, message, answers) {
    if (shown[level] !== uuid) {
      return;
    }
    var panel = clear(childPanel(level));
    panel.appendChild(el('div', { className: 'ai-panel-head' }, [
      el('h2', { text: 'AI results of this ' + NOUN[level] }),
      el('button', { type: 'button', id: 'ai-predict-' + level, className: 'ai-button',
                     onclick: function () { openChooser(level, uuid); } }, ['Predict…'])
    ]));
    if (answers) {
      panel.appendChild(answers);
    }
    if (message) {
      panel.appendChild(el('p', { className: 'ai-status', id: 'ai-' + level + '-status', text: message }));
    }
    if (!answer) {
      return;
    }
    var models = answer.models || [];
    if (!(answer.instances || []).length) {
      panel.appendChild(el('p', { className: 'ai-status', text: 'This ' + NOUN[level] + ' has no instance.' }));
      return;
    }
    if (!models.length) {
      panel.appendChild(el('p', { className: 'ai-status', text: 'No instance of this ' + NOUN[level] + ' carries AI results yet.' }));
    }
    var head = el('tr', {}, [el('th', { text: 'Instance' })].concat(models.map(function (m) {
      return el('th', { text: m });
    })).concat([el('th', { text: 'Last run' })]));
    var body = answer.instances.map(function (row) {
      var byModel = {};
      (row.predictions || []).forEach(function (p) { byModel[p.model] = p; });
      var label = (row.seriesNumber !== null && level === 'studies' ? 'S' + row.seriesNumber + ' · ' : '') +
        (row.instanceNumber !== null ? '#' + row.instanceNumber : row.instance.substring(0, 8));
      var cells = [el('td', {}, [el('a', { href: '#instance?uuid=' + encodeURIComponent(row.instance), text: label })])];
      models.forEach(function (m) {
        var p = byModel[m];
        cells.push(p ? el('td', { className: 'ai-cell', 'data-model': m }, [
          el('strong', { text: p.topClass }), ' ', el('span', { text: percent(p.topProbability) }),
          p.heatmap ? ' ' : null,
          p.heatmap ? el('a', { className: 'ai-heatmap-link', title: 'Heatmap of ' + m + ' on this image',
                                href: '#instance?uuid=' + encodeURIComponent(row.instance) + '&heatmap=' +
                                      encodeURIComponent(m), text: 'heatmap' }) : null
        ]) : el('td', { className: 'ai-cell ai-none', text: '—' }));
      });
      var state = row.status ? row.status.state + (row.status.reason ? ': ' + row.status.reason : '') : 'not predicted';
      cells.push(el('td', { className: 'ai-cell ai-state', text: state }));
      return el('tr', { 'data-instance': row.instance }, cells);
    });
    panel.appendChild(el('table', { className: 'ai-summary' }, [el('thead', {}, [head]), el('tbody', {}, body)]));
    if (answer.truncated) {
      panel.appendChild(el('p', { className: 'ai-status', text: 'First ' + answer.instances.length + ' of ' +
        answer.instanceCount + ' instances.' }));
    }
    panel.appendChild(el('p', { className: 'ai-disclaimer', text: DISCLAIMER }));
  }

  function loadSummary(level, uuid, message) {
    var route = level === 'series' ? '/series/' : '/studies/';
    var table = null, answers = null;
    function render(text) {
      renderSummary(level, uuid, table, text, answers);
    }
    render(message || 'Loading AI results…');
    request('GET', route + uuid + '/predictions').done(function (answer) {
      table = answer;
      render(message);
    }).fail(function (xhr) {
      render('Cannot read the AI results: ' + errorText(xhr));
    });
    // The series' answer (or one line per series of the study) above the per-image table. (Explorer's
    // jQuery predates 1.8: .then() does not map values, so each branch builds its node in .done().)
    function show(node) {
      answers = node;
      if (table) {
        render(message);
      }
    }
    if (level === 'series') {
      request('GET', '/series/' + uuid + '/summary').done(function (summary) { show(seriesAnswers(summary)); });
    } else {
      loadStudyAnswers(uuid).done(function (lines) { show(studyAnswers(lines)); });
    }
  }

  // --- model chooser and prediction --------------------------------------------
  function instancesOf(level, uuid) {
    // Orthanc ids of the instances to predict, and one instance per series to pre-select models.
    var deferred = $.Deferred();
    if (level === 'instance') {
      return deferred.resolve([uuid], [uuid]).promise();
    }
    var path = level === 'series' ? '../series/' + uuid : '../studies/' + uuid + '/series';
    $.ajax({ url: path, dataType: 'json', cache: false }).done(function (answer) {
      // A study's report series (the plugin's SRs, anyone's KO or PR) hold no image to predict.
      var series = level === 'series' ? [answer] : answer.filter(holdsImages);
      var all = [], samples = [];
      series.forEach(function (s) {
        all = all.concat(s.Instances || []);
        if ((s.Instances || []).length) {
          samples.push(s.Instances[0]);
        }
      });
      deferred.resolve(all, samples);
    }).fail(function (xhr) { deferred.reject(xhr); });
    return deferred.promise();
  }

  function closeChooser() {
    var overlay = document.getElementById('ai-chooser');
    if (overlay) {
      overlay.parentNode.removeChild(overlay);
    }
  }

  function openChooser(level, uuid) {
    closeChooser();
    var box = el('div', { className: 'ai-dialog', role: 'dialog', 'aria-label': 'Choose models' }, [
      el('h3', { text: 'Predict with…' }),
      el('p', { className: 'ai-status', id: 'ai-chooser-status', text: 'Loading the models…' })
    ]);
    var overlay = el('div', { id: 'ai-chooser', className: 'ai-overlay' }, [box]);
    document.body.appendChild(overlay);

    instancesOf(level, uuid).done(function (instances, samples) {
      var checks = samples.slice(0, 10).map(function (id) { return request('GET', '/instances/' + id + '/applicable'); });
      $.when.apply($, checks.length ? checks : [request('GET', '/models')]).done(function () {
        var answers = checks.length > 1 ? Array.prototype.slice.call(arguments).map(function (a) { return a[0]; })
                                        : [arguments[0]];
        fillChooser(box, level, uuid, instances, answers);
      }).fail(function (xhr) {
        document.getElementById('ai-chooser-status').textContent = 'Cannot read the models: ' + errorText(xhr);
      });
    }).fail(function (xhr) {
      document.getElementById('ai-chooser-status').textContent = 'Cannot list the instances: ' + errorText(xhr);
    });
  }

  function fillChooser(box, level, uuid, instances, answers) {
    var models = answers[0].models || [];
    var applicable = {}, reasons = {}, cannot = null;
    answers.forEach(function (a) {
      (a.applicable || []).forEach(function (name) { applicable[name] = true; });
      Object.keys(a.notApplicable || {}).forEach(function (name) { reasons[name] = a.notApplicable[name]; });
      if (a.cannotPredict) {
        cannot = a.cannotPredict;
      }
    });
    document.getElementById('ai-chooser-status').textContent = level === 'instance'
      ? 'The models that apply to this image are ticked.'
      : 'The models that apply to the images of this ' + NOUN[level] + ' are ticked; ' + instances.length +
        ' instance(s) will be predicted.';
    if (level === 'instance' && cannot) {
      box.appendChild(el('p', { className: 'ai-warning', text: 'This instance cannot be analysed: ' + cannot }));
    }
    var list = el('div', { className: 'ai-models' }, models.map(function (m) {
      var id = 'ai-model-' + m.name.replace(/[^a-z0-9_-]/gi, '_');
      var input = el('input', { type: 'checkbox', id: id, value: m.name, 'data-model': m.name });
      input.checked = !!applicable[m.name];
      var why = !applicable[m.name] && reasons[m.name] ? 'does not apply: ' + reasons[m.name] : null;
      return el('label', { className: 'ai-model-choice', 'for': id }, [
        input,
        el('span', { className: 'ai-model-text' }, [
          el('strong', { text: m.name }), ' ', el('span', { text: m.version }),
          el('br'),
          el('span', { className: 'ai-meta', text: [m.title, m.dataset ? 'dataset ' + m.dataset : null]
            .filter(Boolean).join(' · ') }),
          why ? el('br') : null,
          why ? el('span', { className: 'ai-meta ai-why', text: why }) : null
        ])
      ]);
    }));
    if (!models.length) {
      list.appendChild(el('p', { className: 'ai-warning', text: 'No model is loaded.' }));
    }
    var progress = el('p', { className: 'ai-status', id: 'ai-progress' });
    var run = el('button', { type: 'button', id: 'ai-run', className: 'ai-button ai-primary' }, ['Run']);
    var cancel = el('button', { type: 'button', id: 'ai-cancel', className: 'ai-button', onclick: closeChooser }, ['Close']);
    run.addEventListener('click', function () {
      var chosen = $(list).find('input:checked').map(function () { return this.value; }).get();
      if (!chosen.length) {
        progress.textContent = 'Tick at least one model.';
        return;
      }
      run.disabled = true;
      cancel.disabled = true;
      $(list).find('input').prop('disabled', true);
      predictAll(level, uuid, instances, chosen, progress).always(function () {
        cancel.disabled = false;
      });
    });
    box.appendChild(list);
    box.appendChild(progress);
    box.appendChild(el('div', { className: 'ai-dialog-buttons' }, [run, cancel]));
  }

  function predictAll(level, uuid, instances, models, progress) {
    // One instance after the other through POST /ai/instances/{id}/predict, so progress is real.
    var deferred = $.Deferred();
    var counts = {}, problems = [], index = 0, started = Date.now();
    var timer = window.setInterval(show, 500);
    function show() {
      progress.textContent = 'Running ' + models.join(', ') + ': ' + index + ' of ' + instances.length +
        ' image(s) done (' + Math.round((Date.now() - started) / 1000) + ' s)…';
    }
    function finish() {
      window.clearInterval(timer);
      var parts = Object.keys(counts).map(function (k) { return counts[k] + ' ' + k; });
      progress.textContent = 'Done in ' + Math.round((Date.now() - started) / 100) / 10 + ' s: ' + parts.join(', ') +
        (problems.length ? ' — ' + problems.slice(0, 3).join('; ') : '') + '.';
      progress.setAttribute('data-done', 'true');
      if (level === 'instance') {
        loadInstance(uuid, false);
        refreshOrthancInstance();
      } else {
        // The Structured Reports of what was just predicted, before the summary shows them.
        request('POST', '/' + level + '/' + uuid + '/report').always(function () { loadSummary(level, uuid); });
      }
      if (!problems.length) {
        window.setTimeout(closeChooser, 800);
      }
      deferred.resolve();
    }
    function next() {
      if (index >= instances.length) {
        finish();
        return;
      }
      show();
      request('POST', '/instances/' + instances[index] + '/predict', { models: models, force: true })
        .done(function (answer) {
          counts[answer.state] = (counts[answer.state] || 0) + 1;
          if (answer.reason && answer.state !== 'predicted') {
            problems.push(answer.reason);
          }
        })
        .fail(function (xhr) {
          counts.failed = (counts.failed || 0) + 1;
          problems.push(errorText(xhr));
        })
        .always(function () {
          index += 1;
          next();
        });
    }
    next();
    return deferred.promise();
  }

  // --- upload of DICOM, PNG or JPEG -----------------------------------------------
  var UPLOAD_FIELDS = [
    ['patientName', 'Patient name', 'UNKNOWN^UPLOADED IMAGE', 'text'],
    ['patientId', 'Patient ID', 'AI-UPLOAD', 'text'],
    ['patientBirthDate', 'Birth date', '', 'date'],
    ['patientSex', 'Sex (M, F, O)', '', 'text'],
    ['studyDescription', 'Study description', 'Uploaded image', 'text'],
    ['accessionNumber', 'Accession number', '', 'text']
  ];

  function uploadPanel() {
    if (document.getElementById('ai-upload')) {
      return;
    }
    var file = el('input', { type: 'file', id: 'ai-upload-file', accept: '.dcm,.dicom,.png,.jpg,.jpeg,image/png,image/jpeg,application/dicom' });
    var fields = UPLOAD_FIELDS.map(function (f) {
      return el('label', { className: 'ai-field', 'for': 'ai-upload-' + f[0] }, [
        el('span', { text: f[1] }),
        el('input', { type: f[3], id: 'ai-upload-' + f[0], 'data-field': f[0], placeholder: f[2], 'data-role': 'none' })
      ]);
    });
    var status = el('p', { className: 'ai-status', id: 'ai-upload-status' });
    var button = el('button', { type: 'button', id: 'ai-upload-button', className: 'ai-button ai-primary' },
                    ['Upload and predict']);
    button.addEventListener('click', function () { startUpload(file, status, button); });
    var panel = el('div', { id: 'ai-upload', className: 'ai-panel' }, [
      el('h2', { text: 'Upload an image for AI prediction' }),
      el('p', { className: 'ai-meta', text: 'A DICOM file is stored as it is. A PNG or JPEG becomes a DICOM ' +
        'Secondary Capture with the patient and study details below (the grey placeholders are the defaults), ' +
        'then the models that apply to it run.' }),
      el('div', {}, [file]),
      el('div', { className: 'ai-fields' }, fields),
      button,
      status
    ]);
    $('#upload div[data-role="content"]').first().prepend(panel);
  }

  function readAsDataUrl(blob) {
    var deferred = $.Deferred();
    var reader = new FileReader();
    reader.onload = function () { deferred.resolve(reader.result); };
    reader.onerror = function () { deferred.reject(reader.error); };
    reader.readAsDataURL(blob);
    return deferred.promise();
  }

  function redrawAsPng(dataUrl) {
    // For images Orthanc cannot convert (palette, grey+alpha, CMYK …): the browser decodes, we send RGB(A) PNG.
    var deferred = $.Deferred();
    var image = new Image();
    image.onload = function () {
      var canvas = document.createElement('canvas');
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      var context = canvas.getContext('2d');
      context.fillStyle = '#000';
      context.fillRect(0, 0, canvas.width, canvas.height);
      context.drawImage(image, 0, 0);
      deferred.resolve(canvas.toDataURL('image/png'));
    };
    image.onerror = function () { deferred.reject(); };
    image.src = dataUrl;
    return deferred.promise();
  }

  function startUpload(fileInput, status, button) {
    var file = fileInput.files && fileInput.files[0];
    if (!file) {
      status.textContent = 'Choose a file first.';
      return;
    }
    var body = { fileName: file.name };
    $('#ai-upload input[data-field]').each(function () {
      if (this.value) {
        body[this.getAttribute('data-field')] = this.value;
      }
    });
    button.disabled = true;
    status.textContent = 'Reading ' + file.name + '…';
    readAsDataUrl(file).done(function (dataUrl) {
      send(dataUrl, true);
    }).fail(function () {
      status.textContent = 'Cannot read the file.';
      button.disabled = false;
    });

    function send(content, mayRedraw) {
      body.content = content;
      status.textContent = 'Uploading ' + file.name + '…';
      request('POST', '/upload', body).done(function (answer) {
        status.textContent = 'Stored as a ' + (answer.kind === 'dicom' ? 'DICOM instance' : 'Secondary Capture') +
          '; opening it…';
        button.disabled = false;
        fileInput.value = '';
        pendingPrediction[answer.instance] = true;
        window.location.assign('explorer.html#instance?uuid=' + encodeURIComponent(answer.instance));
      }).fail(function (xhr) {
        var convertible = false;
        try { convertible = JSON.parse(xhr.responseText).convertible; } catch (e) { /* not JSON */ }
        if (convertible && mayRedraw) {
          status.textContent = 'Converting the image in the browser…';
          redrawAsPng(content).done(function (png) { send(png, false); }).fail(function () {
            status.textContent = 'Upload refused: ' + errorText(xhr);
            button.disabled = false;
          });
          return;
        }
        status.textContent = 'Upload refused: ' + errorText(xhr);
        button.disabled = false;
      });
    }
  }

  // Instances just uploaded: their page waits for the prediction.
  var pendingPrediction = {};

  // --- page hooks ------------------------------------------------------------------
  stylesheet();

  $('#instance').live('pagebeforeshow', function () {
    var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
    if (!uuid) {
      return;
    }
    shown.instance = uuid;
    var asked = $.mobile.pageData.heatmap;
    if (typeof asked === 'string' && asked) {
      // From a series or study table's "heatmap" link: that model's heatmap, in view.
      try { asked = decodeURIComponent(asked); } catch (e) { /* left as it came */ }
      heatmapChoice = { uuid: uuid, model: asked, cls: null, opacity: DEFAULT_OPACITY, visible: true, scroll: true };
    }
    var wait = !!pendingPrediction[uuid];
    delete pendingPrediction[uuid];
    renderInstance(uuid, null, 'Loading AI results…');
    loadInstance(uuid, wait);
  });

  $('#series').live('pagebeforeshow', function () {
    var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
    if (uuid) {
      shown.series = uuid;
      loadSummary('series', uuid);
    }
  });

  $('#study').live('pagebeforeshow', function () {
    var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
    if (uuid) {
      shown.studies = uuid;
      loadSummary('studies', uuid);
    }
  });

  $('#upload').live('pagebeforeshow', uploadPanel);

  $(document).live('pagebeforehide', function () {
    closeChooser();
  });
}());
