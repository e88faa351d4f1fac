const express = require("express");

const app = express();
app.use(express.json());
const accounts = [];

app.post("/account", (req, res) => {
  accounts.push({ name: req.body.name, balance: 0 });
  return res.status(201).send();
});

module.exports = { app, accounts };
