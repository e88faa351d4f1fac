/* eslint-env mocha */
import { expect } from 'chai'
import { sum } from '../lib/utils.js'

describe('sum', function () {
  it('adds', function () {
    expect(sum(1, 2, 3)).to.equal(6)
  })
})
