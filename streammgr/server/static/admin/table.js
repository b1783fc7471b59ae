// A virtualised table: only the rows on screen (and a few more) are in the DOM, so
// 10,000 streams cost a few dozen elements. Rows are absolutely positioned inside a
// spacer as tall as every row together; scrolling re-fills the same elements. Every
// value goes in with textContent: keys and labels are the clients' own text.

export const ROW_HEIGHT = 24; // px, as --row in dashboard.css
const OVERSCAN = 6;
const NUMERIC = new Set(["age", "items", "bytes", "rate"]);

export class VirtualTable {
  /**
   * @param {HTMLElement} container  an element with class "vtable"
   * @param {string[]} columns       the column names, in order
   * @param {(row: object) => string[]} cellsOf  the texts of a row's cells
   * @param {(row: object) => void} onCancel     the row's Cancel button
   */
  constructor(container, columns, cellsOf, onCancel) {
    this.container = container;
    this.columns = columns;
    this.cellsOf = cellsOf;
    this.onCancel = onCancel;
    this.rows = [];
    this.pool = [];
    container.classList.add(`cols-${columns.length}`);
    const head = document.createElement("div");
    head.className = "head";
    for (const name of [...columns, ""]) {
      const cell = document.createElement("span");
      cell.className = NUMERIC.has(name) ? "cell num" : "cell";
      cell.textContent = name;
      head.append(cell);
    }
    this.head = head;
    this.spacer = document.createElement("div");
    this.spacer.className = "spacer";
    container.append(head, this.spacer);
    container.addEventListener("scroll", () => this.render(), { passive: true });
    container.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action=cancel]");
      if (button === null) return;
      const element = button.closest(".row");
      if (element !== null && element.row !== undefined) this.onCancel(element.row);
    });
  }

  /** Show `rows` (an array, in order); draws at once. */
  setRows(rows) {
    this.rows = rows;
    this.spacer.style.height = `${rows.length * ROW_HEIGHT + this.head.offsetHeight}px`;
    this.render();
  }

  /** Forget every row and remove their elements. */
  clear() {
    for (const element of this.pool) element.remove();
    this.pool = [];
    this.rows = [];
    this.spacer.style.height = "0px";
  }

  /** The rows on screen now. */
  visibleRows() {
    return this.pool.filter((element) => !element.hidden).map((element) => element.row);
  }

  render() {
    const top = this.container.scrollTop;
    const height = this.container.clientHeight || 400;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const wanted = Math.ceil(height / ROW_HEIGHT) + 2 * OVERSCAN;
    while (this.pool.length < wanted) this.pool.push(this._newRow());
    const offset = this.head.offsetHeight;
    for (let slot = 0; slot < this.pool.length; slot++) {
      const element = this.pool[slot];
      const index = first + slot;
      if (slot >= wanted || index >= this.rows.length) {
        element.hidden = true;
        element.row = undefined;
        continue;
      }
      const row = this.rows[index];
      element.hidden = false;
      element.row = row;
      element.style.transform = `translateY(${offset + index * ROW_HEIGHT}px)`;
      const texts = this.cellsOf(row);
      const cells = element.children;
      for (let column = 0; column < texts.length; column++) {
        const cell = cells[column];
        if (cell.textContent !== texts[column]) cell.textContent = texts[column];
        cell.title = texts[column];
      }
      const phase = row.phase || "";
      if (element.dataset.phase !== phase) {
        element.dataset.phase = phase;
        element.className = `row phase-${phase}`;
      }
    }
  }

  _newRow() {
    const element = document.createElement("div");
    element.className = "row";
    element.hidden = true;
    for (const name of this.columns) {
      const cell = document.createElement("span");
      cell.className = NUMERIC.has(name) ? "cell num" : "cell";
      element.append(cell);
    }
    const action = document.createElement("span");
    action.className = "cell";
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.action = "cancel";
    button.textContent = "Cancel";
    action.append(button);
    element.append(action);
    this.container.append(element);
    return element;
  }
}
