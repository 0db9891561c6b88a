// A small Markdown renderer that builds DOM nodes and never parses HTML: every piece of text goes
// in through createTextNode, so a reply containing <script> or <img onerror> shows as text.
// Supported: paragraphs, headings, fenced code, block quotes, lists, **bold**, *italic*, `code`
// and [links](https://...) to http(s) addresses only.
"use strict";

const SluiceMarkdown = (() => {
  // Emphasis needs a non-word character (or the edge) on its outer sides: snake_case and 2*3*4 stay text.
  const INLINE =
    /(`[^`\n]+`)|((?<!\w)\*\*[^*\n]+\*\*(?!\w)|(?<!\w)__[^_\n]+__(?!\w))|((?<!\w)\*[^*\s][^*\n]*\*(?!\w)|(?<!\w)_[^_\s][^_\n]*_(?!\w))|(\[[^\]\n]+\]\([^)\s]+\))/g;
  const FENCE = /^\s*```/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const QUOTE = /^>\s?(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;

  function element(tag, ...children) {
    const node = document.createElement(tag);
    node.append(...children);
    return node;
  }

  function safeUrl(text) {
    try {
      const url = new URL(text);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function link(token) {
    const close = token.indexOf("](");
    const label = token.slice(1, close);
    const href = safeUrl(token.slice(close + 2, -1));
    if (href === null) return document.createTextNode(token);
    const anchor = element("a", ...inline(label));
    anchor.href = href;
    anchor.rel = "noopener noreferrer nofollow";
    anchor.target = "_blank";
    return anchor;
  }

  // Text with inline markup, as a list of nodes.
  function inline(text) {
    const nodes = [];
    let last = 0;
    for (const match of text.matchAll(INLINE)) {
      if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
      const [token, code, strong, emphasis] = match;
      if (code) nodes.push(element("code", token.slice(1, -1)));
      else if (strong) nodes.push(element("strong", ...inline(token.slice(2, -2))));
      else if (emphasis) nodes.push(element("em", ...inline(token.slice(1, -1))));
      else nodes.push(link(token));
      last = match.index + token.length;
    }
    if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
    return nodes;
  }

  function list(tag, items) {
    return element(tag, ...items.map((item) => element("li", ...inline(item))));
  }

  // Consecutive lines matching `pattern`, from `start`: their captured text and where they end.
  function run(lines, start, pattern) {
    const items = [];
    let index = start;
    while (index < lines.length && pattern.test(lines[index])) {
      items.push(lines[index].match(pattern)[1]);
      index += 1;
    }
    return [items, index];
  }

  function render(text) {
    const fragment = document.createDocumentFragment();
    const lines = text.replace(/\r\n?/g, "\n").split("\n");
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) fragment.append(element("p", ...inline(paragraph.join("\n"))));
      paragraph = [];
    };
    let index = 0;
    while (index < lines.length) {
      const line = lines[index];
      let items;
      if (FENCE.test(line)) {
        flush();
        const code = [];
        index += 1;
        while (index < lines.length && !FENCE.test(lines[index])) {
          code.push(lines[index]);
          index += 1;
        }
        fragment.append(element("pre", element("code", code.join("\n"))));
        index += 1; // the closing fence, or past the end of an unfinished block
      } else if (HEADING.test(line)) {
        flush();
        const [, hashes, title] = line.match(HEADING);
        fragment.append(element(`h${Math.min(hashes.length + 2, 6)}`, ...inline(title)));
        index += 1;
      } else if (QUOTE.test(line)) {
        flush();
        [items, index] = run(lines, index, QUOTE);
        fragment.append(element("blockquote", element("p", ...inline(items.join("\n")))));
      } else if (BULLET.test(line)) {
        flush();
        [items, index] = run(lines, index, BULLET);
        fragment.append(list("ul", items));
      } else if (NUMBERED.test(line)) {
        flush();
        [items, index] = run(lines, index, NUMBERED);
        fragment.append(list("ol", items));
      } else if (line.trim() === "") {
        flush();
        index += 1;
      } else {
        paragraph.push(line);
        index += 1;
      }
    }
    flush();
    return fragment;
  }

  return { render };
})();
