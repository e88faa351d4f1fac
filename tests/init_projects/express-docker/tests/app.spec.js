const request = require("supertest");
const { app, accounts } = require("../src/app");

test("an account is created", async () => {
  const res = await request(app).post("/account").send({ name: "pipekit" });
  expect(res.statusCode).toBe(201);
  expect(accounts).toHaveLength(1);
});
