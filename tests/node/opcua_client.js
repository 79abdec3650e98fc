// An independent OPC UA client (node-opcua, not the project's asyncua) for tests/edge/test_opcua_e2e.py.
// argv[2]: JSON {"endpoint", "camera", "part", "part_id", "bad_threshold", "good_threshold", "recipe"}
// Browses VisionSystem, reads the camera's values, calls Trigger (a good and a bad part id), writes the
// threshold (a bad value, then a good one), writes RecipeId when "recipe" is given, reads the part's verdict;
// stdout: node-opcua's log lines, then "RESULT " and one JSON document with everything it saw.
"use strict";
const {
  OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, DataType,
} = require("node-opcua");

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const args = JSON.parse(process.argv[2]);
  const client = OPCUAClient.create({
    applicationName: "edge-anomaly-test-client",
    endpointMustExist: false,
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    connectionStrategy: { maxRetry: 3, initialDelay: 200, maxDelay: 1000 },
  });
  await client.connect(args.endpoint);
  const session = await client.createSession();
  const out = {};
  try {
    const ns = (await session.readNamespaceArray()).indexOf("urn:edge-anomaly");
    const id = (path) => `ns=${ns};s=VisionSystem.${path}`;
    const names = async (path) =>
      (await session.browse(id(path))).references.map((r) => r.browseName.name).sort();
    const read = async (path) => {
      const dv = await session.read({ nodeId: id(path), attributeId: AttributeIds.Value });
      const v = dv.value.value;
      return v instanceof Date ? v.toISOString() : v;
    };
    const cam = `Cameras.${args.camera}`;
    const camValues = async () => {
      const doc = {};
      for (const name of ["LastVerdict", "Score", "Threshold", "PartId", "ResultTimestamp", "State", "RecipeId",
        "LastCommandError"]) doc[name] = await read(`${cam}.${name}`);
      return doc;
    };
    out.namespace = ns;
    out.vision = (await session.browse(`ns=${ns};s=VisionSystem`)).references.map((r) => r.browseName.name).sort();
    out.cameras = await names("Cameras");
    out.parts = await names("Parts");
    out.camera_variables = await names(cam);
    out.before = await camValues();

    const call = async (camera, partId) => {
      const res = await session.call({
        objectId: `ns=${ns};s=VisionSystem`, methodId: id("Trigger"),
        inputArguments: [{ dataType: DataType.String, value: camera }, { dataType: DataType.String, value: partId }],
      });
      return { status: res.statusCode.name, message: (res.outputArguments || []).map((a) => a.value)[0] };
    };
    out.trigger = await call(args.camera, args.part_id);
    out.trigger_bad = await call(args.camera, "bad/id");
    out.trigger_bad_error = await read(`${cam}.LastCommandError`);

    const write = async (path, dataType, value) =>
      (await session.write({ nodeId: id(path), attributeId: AttributeIds.Value, value: { value: { dataType, value } } })).name;
    out.write_bad = { status: await write(`${cam}.Threshold`, DataType.Double, args.bad_threshold) };
    out.write_bad.error = await read(`${cam}.LastCommandError`);
    out.write_bad.threshold = await read(`${cam}.Threshold`);
    out.write_good = { status: await write(`${cam}.Threshold`, DataType.Double, args.good_threshold) };
    await sleep(300);
    out.write_good.threshold = await read(`${cam}.Threshold`);
    out.write_good.error = await read(`${cam}.LastCommandError`);
    if (args.recipe) {
      out.recipe = { status: await write(`${cam}.RecipeId`, DataType.String, args.recipe) };
      out.recipe.error = await read(`${cam}.LastCommandError`);
    }
    // the part of the trigger above: its verdict (the deadline has long passed by now)
    for (let i = 0; i < 40 && (await read(`Parts.${args.part}.PartId`)) !== args.part_id; i++) await sleep(100);
    out.part = {};
    for (const name of ["LastVerdict", "Action", "PartId", "Reason", "Late", "Timestamp", "ElapsedMs"]) {
      out.part[name] = await read(`Parts.${args.part}.${name}`);
    }
    out.after = await camValues();
  } finally {
    await session.close();
    await client.disconnect();
  }
  process.stdout.write("RESULT " + JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stdout.write("RESULT " + JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + "\n");
  process.exit(1);
});
