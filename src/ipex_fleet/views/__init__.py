"""What people read: the live lines, tables, the HTML report and its templates, the maintenance report."""
